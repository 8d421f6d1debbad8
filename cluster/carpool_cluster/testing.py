"""Test support: a cluster to test against, fresh namespaces, and narrow identities.

Contract: ``provide_cluster(tmp)`` returns a ``TestCluster``: the one named by ``$KUBECONFIG``
when set (any conformant cluster, kind included), otherwise a local control plane started in
``tmp`` (stopped by ``TestCluster.close()``). If binaries cannot be built or a daemon cannot
start, it raises with the reason; it never skips. ``identity_kubeconfig()`` makes a
ServiceAccount bound to exactly the rules given and returns a kubeconfig that authenticates as
it, so tests exercise least privilege for real. ``wait_for()`` polls instead of sleeping.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kubernetes import client, config

from carpool_cluster import binaries, controlplane, kubelet, processes, prometheus
from carpool_cluster.kubeconfig import service_account_kubeconfig

T = TypeVar("T")


@dataclasses.dataclass
class TestCluster:
    __test__ = False  # not a pytest test class

    kubeconfig: Path
    server: str
    ca_file: str
    kubectl: Path
    helm: Path
    local: controlplane.ClusterState | None  # None when testing an external cluster

    def admin_api(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def prometheus_url(self) -> str:
        """Prometheus scraping this cluster's pods: local, or ``$CARPOOL_PROMETHEUS_URL``."""
        if self.local is None:
            url = os.environ.get("CARPOOL_PROMETHEUS_URL")
            if not url:
                raise RuntimeError(
                    "testing an external cluster needs CARPOOL_PROMETHEUS_URL: a Prometheus "
                    "that scrapes pods annotated prometheus.io/scrape=true"
                )
            return url
        return prometheus.url_of(self.local) or prometheus.start(self.local)

    def ensure_gpu_nodes(self, nodes: int = 2, gpus_per_node: int = 2) -> None:
        """Start the process kubelet once (local clusters); external ones bring their own."""
        if self.local is None:
            return
        record = self.local.processes.get("process-kubelet")
        if record is None or not processes.is_running(record):
            kubelet.start_daemon(self.local, nodes, gpus_per_node)

    def close(self) -> None:
        if self.local is not None:
            controlplane.down(Path(self.local.state_dir))


def provide_cluster(tmp: Path) -> TestCluster:
    external = os.environ.get("KUBECONFIG")
    if external:
        api = config.new_client_from_config(config_file=external)
        tools = binaries.expected()
        return TestCluster(
            kubeconfig=Path(external),
            server=api.configuration.host,
            ca_file=api.configuration.ssl_ca_cert,
            kubectl=Path(shutil.which("kubectl") or tools.kubectl),
            helm=Path(shutil.which("helm") or tools.helm),
            local=None,
        )
    state = controlplane.up(tmp / "cluster")
    return TestCluster(
        kubeconfig=Path(state.kubeconfig),
        server=state.server,
        ca_file=state.ca_file,
        kubectl=Path(state.kubectl),
        helm=Path(state.helm),
        local=state,
    )


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout_seconds: float = 60.0,
    interval_seconds: float = 0.25,
) -> T:
    """Poll ``probe`` until it returns a truthy value; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_seconds
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except client.ApiException as error:
            last_error = error
        time.sleep(interval_seconds)
    detail = f" (last error: {last_error})" if last_error else ""
    raise AssertionError(f"timed out after {timeout_seconds:.0f}s waiting for {what}{detail}")


def create_namespace(api: client.ApiClient, prefix: str = "t") -> str:
    core = client.CoreV1Api(api)
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name, "labels": {"carpool.dev/test": "true"}}})
    # Pods are refused until the controller-manager has made the namespace's default account.
    wait_for(
        f"the default ServiceAccount in {name}",
        lambda: core.read_namespaced_service_account("default", name),
    )
    return name


def identity_kubeconfig(
    cluster: TestCluster,
    api: client.ApiClient,
    folder: Path,
    *,
    account: str,
    account_namespace: str,
    rules: list[dict],
    role_namespace: str | None = None,
) -> Path:
    """A kubeconfig for a ServiceAccount allowed exactly ``rules``.

    With ``role_namespace`` the rules are a Role there; without, a ClusterRole.
    """
    core = client.CoreV1Api(api)
    rbac = client.RbacAuthorizationV1Api(api)
    core.create_namespaced_service_account(account_namespace, {"metadata": {"name": account}})
    name = f"{account_namespace}-{account}"
    subject = [{"kind": "ServiceAccount", "name": account, "namespace": account_namespace}]
    if role_namespace:
        rbac.create_namespaced_role(role_namespace, {"metadata": {"name": name}, "rules": rules})
        rbac.create_namespaced_role_binding(
            role_namespace,
            {
                "metadata": {"name": name},
                "subjects": subject,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            },
        )
    else:
        rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "subjects": subject,
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
            }
        )
    return service_account_kubeconfig(
        api,
        folder / f"{name}.kubeconfig",
        cluster.server,
        Path(cluster.ca_file),
        account,
        account_namespace,
    )
