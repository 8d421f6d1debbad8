"""Write kubeconfig files: for a client certificate or for a bearer token.

Contract: each function writes one self-contained kubeconfig (one cluster, one user, one
context, current) at the given path, mode 0600, and returns the path.
``service_account_kubeconfig`` first asks the API server for a token of that ServiceAccount
(TokenRequest), so the file authenticates exactly as the account.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from kubernetes import client


def _write(path: Path, server: str, ca_file: Path, user: dict, namespace: str | None) -> Path:
    context = {"cluster": "carpool-local", "user": "user"}
    if namespace:
        context["namespace"] = namespace
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "carpool-local",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "carpool-local", "context": context}],
        "current-context": "carpool-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)
    return path


def write_cert_kubeconfig(
    path: Path, server: str, ca_file: Path, cert_file: Path, key_file: Path
) -> Path:
    user = {"client-certificate": str(cert_file), "client-key": str(key_file)}
    return _write(path, server, ca_file, user, None)


def write_token_kubeconfig(
    path: Path, server: str, ca_file: Path, token: str, namespace: str | None = None
) -> Path:
    return _write(path, server, ca_file, {"token": token}, namespace)


def service_account_kubeconfig(
    api: client.ApiClient,
    path: Path,
    server: str,
    ca_file: Path,
    account: str,
    namespace: str,
    lifetime_seconds: int = 6 * 3600,
) -> Path:
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=lifetime_seconds)
    )
    token = (
        client.CoreV1Api(api)
        .create_namespaced_service_account_token(account, namespace, request)
        .status.token
    )
    return write_token_kubeconfig(path, server, ca_file, token, namespace)
