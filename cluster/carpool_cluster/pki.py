"""Certificates and keys for a local control plane, generated with ``cryptography``.

Contract: ``create_pki(folder)`` writes a CA, the API server's serving certificate (valid for
127.0.0.1, localhost and the in-cluster service names), client certificates for the admin,
the controller-manager, the scheduler and Prometheus, and the service-account signing key
pair, and returns their paths. Files are PEM; keys are written 0600. Nothing here starts a
process or talks to the network.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair
    prometheus: KeyPair
    service_account_key: Path
    service_account_pub: Path


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


def _write_key(path: Path, key) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _issue(
    subject: x509.Name,
    issuer: x509.Name,
    public_key,
    signing_key,
    *,
    is_ca: bool = False,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [ExtendedKeyUsageOID.SERVER_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names or server_ips:
        alt = [x509.DNSName(n) for n in server_names]
        alt += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _leaf(folder: Path, stem: str, ca_cert, ca_key, subject: x509.Name, **kwargs) -> KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(subject, ca_cert.subject, key.public_key(), ca_key, **kwargs)
    pair = KeyPair(cert=folder / f"{stem}.crt", key=folder / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(pair.key, key)
    return pair


def create_pki(folder: Path) -> Pki:
    """Write a complete PKI for one local control plane into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_subject = _name("carpool-local-ca")
    ca_cert = _issue(ca_subject, ca_subject, ca_key.public_key(), ca_key, is_ca=True)
    ca = KeyPair(cert=folder / "ca.crt", key=folder / "ca.key")
    ca.cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca.key, ca_key)

    apiserver = _leaf(
        folder,
        "apiserver",
        ca_cert,
        ca_key,
        _name("kube-apiserver"),
        server_names=(
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ),
        server_ips=("127.0.0.1", "10.0.0.1"),
    )
    # The admin is in system:masters; every other identity gets only what RBAC grants it.
    admin = _leaf(
        folder, "admin", ca_cert, ca_key, _name("carpool-admin", "system:masters"), client=True
    )
    controller_manager = _leaf(
        folder,
        "controller-manager",
        ca_cert,
        ca_key,
        _name("system:kube-controller-manager"),
        client=True,
    )
    scheduler = _leaf(
        folder, "scheduler", ca_cert, ca_key, _name("system:kube-scheduler"), client=True
    )
    prometheus = _leaf(
        folder, "prometheus", ca_cert, ca_key, _name("carpool:prometheus"), client=True
    )

    # Service-account tokens are signed with RSA: every Kubernetes component supports it.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key_path, sa_pub_path = folder / "sa.key", folder / "sa.pub"
    _write_key(sa_key_path, sa_key)
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Pki(
        ca=ca,
        apiserver=apiserver,
        admin=admin,
        controller_manager=controller_manager,
        scheduler=scheduler,
        prometheus=prometheus,
        service_account_key=sa_key_path,
        service_account_pub=sa_pub_path,
    )
