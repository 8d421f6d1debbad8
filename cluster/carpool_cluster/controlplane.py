"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler.

Contract: ``up(state_dir)`` builds the pinned binaries if needed, generates a PKI, starts the
four daemons on free loopback ports, waits until the API server's ``/readyz`` is ok and the
controllers work (the ``default`` ServiceAccount exists), and returns a ``ClusterState`` also
saved as ``state_dir/state.json``. ``down(state_dir)`` stops exactly the processes recorded
there. ``load(state_dir)`` reads the state back. Every log lives in ``state_dir/logs``.
There are no Nodes: the process kubelet (``carpool_cluster.kubelet``) registers them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import ssl
import urllib.request
from pathlib import Path

from carpool_cluster import binaries, pki, processes
from carpool_cluster.kubeconfig import write_cert_kubeconfig

SERVICE_CIDR = "10.0.0.0/24"
STATE_FILE = "state.json"


@dataclasses.dataclass
class ClusterState:
    state_dir: str
    server: str
    kubeconfig: str
    ca_file: str
    kubernetes_version: str
    kubectl: str
    helm: str
    processes: dict[str, processes.ProcessRecord]
    prometheus_kubeconfig: str = ""
    prometheus_cert: str = ""
    prometheus_key: str = ""

    def save(self) -> None:
        data = dataclasses.asdict(self)
        data["processes"] = {k: v.to_dict() for k, v in self.processes.items()}
        Path(self.state_dir, STATE_FILE).write_text(json.dumps(data, indent=2))


def load(state_dir: Path) -> ClusterState | None:
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(ClusterState)}
    if not known.issuperset(data):  # written by another carpool version: nothing to manage
        return None
    data["processes"] = {
        k: processes.ProcessRecord.from_dict(v) for k, v in data["processes"].items()
    }
    return ClusterState(**data)


def _admin_ssl_context(ca: pki.Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.ca.cert))
    context.load_cert_chain(str(ca.admin.cert), str(ca.admin.key))
    return context


def _get(url: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        return response.status, response.read()


def _start_etcd(tools: binaries.Binaries, state: Path, logs: Path) -> processes.ProcessRecord:
    client_port, peer_port = processes.free_port(), processes.free_port()
    peer = f"http://127.0.0.1:{peer_port}"
    return processes.start(
        "etcd",
        [
            tools.etcd,
            "--name",
            "carpool",
            "--data-dir",
            state / "etcd",
            "--listen-client-urls",
            f"http://127.0.0.1:{client_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{client_port}",
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"carpool={peer}",
            # A throwaway test cluster: durability across power loss is not worth the fsyncs.
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
        ],
        logs / "etcd.log",
        port=client_port,
    )


def _apiserver_argv(
    tools: binaries.Binaries, keys: pki.Pki, etcd_port: int, port: int, state: Path
) -> list:
    return [
        tools.kube_apiserver,
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--advertise-address=127.0.0.1",
        # Loopback may not be advertised as the kubernetes Service's endpoint; nothing here
        # reaches the API through that Service (pods get a kubeconfig instead).
        "--endpoint-reconciler-type=none",
        f"--tls-cert-file={keys.apiserver.cert}",
        f"--tls-private-key-file={keys.apiserver.key}",
        f"--client-ca-file={keys.ca.cert}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={keys.service_account_pub}",
        f"--service-account-signing-key-file={keys.service_account_key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--authorization-mode=RBAC",
        "--allow-privileged=false",
        f"--cert-dir={state / 'apiserver-certs'}",
        "--profiling=false",
        "--v=1",
    ]


def up(state_dir: Path, apiserver_timeout_seconds: float = 120.0) -> ClusterState:
    """Start a control plane in ``state_dir`` (which must not hold a running one)."""
    state_dir = Path(state_dir).resolve()
    existing = load(state_dir)
    if existing and any(processes.is_running(p) for p in existing.processes.values()):
        raise processes.StartupError(
            f"a control plane is already running from {state_dir}; "
            "run 'carpool cluster down' first or pick another --state-dir"
        )
    tools = binaries.ensure_binaries()
    # Each `up` is a new cluster: stale etcd data would not match the new certificates and ports.
    for leftover in ("etcd", "pki", "prometheus", "process-kubelet"):
        shutil.rmtree(state_dir / leftover, ignore_errors=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    keys = pki.create_pki(state_dir / "pki")
    records: dict[str, processes.ProcessRecord] = {}
    state = ClusterState(
        state_dir=str(state_dir),
        server="",
        kubeconfig=str(state_dir / "admin.kubeconfig"),
        ca_file=str(keys.ca.cert),
        kubernetes_version=binaries.KUBERNETES_VERSION,
        kubectl=str(tools.kubectl),
        helm=str(tools.helm),
        processes=records,
        prometheus_cert=str(keys.prometheus.cert),
        prometheus_key=str(keys.prometheus.key),
    )
    try:
        records["etcd"] = etcd = _start_etcd(tools, state_dir, logs)
        processes.wait_until(
            "etcd health",
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{etcd.port}/health", timeout=2).status
                == 200
            ),
            30,
            etcd,
        )
        port = processes.free_port()
        state.server = f"https://127.0.0.1:{port}"
        records["kube-apiserver"] = apiserver = processes.start(
            "kube-apiserver",
            _apiserver_argv(tools, keys, etcd.port, port, state_dir),
            logs / "kube-apiserver.log",
            port=port,
        )
        context = _admin_ssl_context(keys)
        processes.wait_until(
            "kube-apiserver /readyz",
            lambda: _get(f"{state.server}/readyz", context)[0] == 200,
            apiserver_timeout_seconds,
            apiserver,
        )
        write_cert_kubeconfig(
            Path(state.kubeconfig), state.server, keys.ca.cert, keys.admin.cert, keys.admin.key
        )
        state.prometheus_kubeconfig = str(
            write_cert_kubeconfig(
                state_dir / "prometheus.kubeconfig",
                state.server,
                keys.ca.cert,
                keys.prometheus.cert,
                keys.prometheus.key,
            )
        )
        _start_controllers(tools, keys, state, logs, records)
        processes.wait_until(
            "the controller-manager to create the default ServiceAccount",
            lambda: (
                _get(f"{state.server}/api/v1/namespaces/default/serviceaccounts/default", context)[
                    0
                ]
                == 200
            ),
            90,
            records["kube-controller-manager"],
        )
    except BaseException:
        for record in reversed(list(records.values())):
            processes.stop(record)
        state.save()
        raise
    state.save()
    return state


def _start_controllers(
    tools,
    keys: pki.Pki,
    state: ClusterState,
    logs: Path,
    records: dict[str, processes.ProcessRecord],
) -> None:
    state_dir = Path(state.state_dir)
    cm_config = write_cert_kubeconfig(
        state_dir / "controller-manager.kubeconfig",
        state.server,
        keys.ca.cert,
        keys.controller_manager.cert,
        keys.controller_manager.key,
    )
    sched_config = write_cert_kubeconfig(
        state_dir / "scheduler.kubeconfig",
        state.server,
        keys.ca.cert,
        keys.scheduler.cert,
        keys.scheduler.key,
    )
    cm_port, sched_port = processes.free_port(), processes.free_port()
    records["kube-controller-manager"] = processes.start(
        "kube-controller-manager",
        [
            tools.kube_controller_manager,
            f"--kubeconfig={cm_config}",
            f"--authentication-kubeconfig={cm_config}",
            f"--authorization-kubeconfig={cm_config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={cm_port}",
            f"--cert-dir={state_dir / 'controller-manager-certs'}",
            f"--service-account-private-key-file={keys.service_account_key}",
            f"--root-ca-file={keys.ca.cert}",
            "--use-service-account-credentials=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--leader-elect=false",
            "--v=1",
        ],
        logs / "kube-controller-manager.log",
        port=cm_port,
    )
    records["kube-scheduler"] = processes.start(
        "kube-scheduler",
        [
            tools.kube_scheduler,
            f"--kubeconfig={sched_config}",
            f"--authentication-kubeconfig={sched_config}",
            f"--authorization-kubeconfig={sched_config}",
            "--bind-address=127.0.0.1",
            f"--secure-port={sched_port}",
            f"--cert-dir={state_dir / 'scheduler-certs'}",
            "--leader-elect=false",
            "--v=1",
        ],
        logs / "kube-scheduler.log",
        port=sched_port,
    )


def down(state_dir: Path) -> list[str]:
    """Stop every process recorded in ``state_dir``; return the names that were running."""
    state = load(Path(state_dir))
    if state is None:
        return []
    stopped = [
        name for name, record in reversed(list(state.processes.items())) if processes.stop(record)
    ]
    return stopped


def status(state_dir: Path) -> dict[str, bool]:
    state = load(Path(state_dir))
    if state is None:
        return {}
    return {name: processes.is_running(r) for name, r in state.processes.items()}
