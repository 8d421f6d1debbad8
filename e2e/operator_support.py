"""Test support: install carpool's CRDs and run `carpool operator` as a real subprocess.

Test-side only (the shipped operator never imports the local-cluster substrate); it reads the
repository's files when called, not at import.

Contract:
- `install_crds(api)` server-side-applies every CRD in the repository's `crds/` folder and
  returns once each is Established and its resources are served.
- `rbac_rules()` are the operator's rules (charts/carpool/files/operator-rbac.yaml), the ones a
  test identity for the operator must be given; `delete_cluster_identity(api, namespace,
  account)` removes the ClusterRole and binding `carpool_cluster.testing.identity_kubeconfig`
  made for it. `operator_identity(cluster, api, namespace, folder)` does both around a block:
  it yields a kubeconfig for the ServiceAccount `ACCOUNT` in `namespace` with exactly those
  rules.
- `delete_pools(api, namespace)` deletes every InferencePool there and waits until they are
  gone (an operator must be running: it releases their finalizers).
- `OperatorProcess(kubeconfig, namespaces=..., ...)` runs `carpool operator` with KUBECONFIG set
  to `kubeconfig` (give it a least-privilege identity, not the admin's), its metrics and health
  endpoints on free loopback ports, and its log in `log_path`. `start()` returns once the health
  endpoint answers; `metric(name)` sums a metric's samples from /metrics; `stop()` sends SIGTERM
  (a clean exit that leaves the peering) and `kill()` SIGKILL (a crash). Like `kopf.testing`,
  nothing here is used by the operator itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml
from kubernetes import client

from carpool_cluster.testing import TestCluster, identity_kubeconfig, wait_for

REPO = Path(__file__).resolve().parents[1]
CRDS_DIR = REPO / "crds"
RBAC_FILE = REPO / "charts" / "carpool" / "files" / "operator-rbac.yaml"


@functools.cache
def rbac_rules() -> list[dict]:
    return yaml.safe_load(RBAC_FILE.read_text())


ACCOUNT = "carpool-operator"
GROUP, VERSION, PLURAL = "carpool.dev", "v1alpha1", "inferencepools"


@contextlib.contextmanager
def operator_identity(
    cluster: TestCluster, api: client.ApiClient, namespace: str, folder: Path
) -> Iterator[Path]:
    path = identity_kubeconfig(
        cluster, api, folder, account=ACCOUNT, account_namespace=namespace, rules=rbac_rules()
    )
    try:
        yield path
    finally:
        delete_cluster_identity(api, namespace, ACCOUNT)


def delete_pools(api: client.ApiClient, namespace: str, timeout_seconds: float = 180.0) -> None:
    custom = client.CustomObjectsApi(api)
    custom.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    # Each deletion waits for the pool's control-loop daemon and resync timer to stop before
    # kopf releases the finalizer; on a busy two-core machine that can take a while.
    wait_for(
        "the pools to be deleted",
        lambda: (
            not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        ),
        timeout_seconds,
    )


def delete_cluster_identity(api: client.ApiClient, namespace: str, account: str) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
        try:
            delete(f"{namespace}-{account}")
        except client.ApiException as error:
            if error.status != 404:
                raise


def install_crds(api: client.ApiClient, timeout_seconds: float = 60.0) -> list[str]:
    extensions = client.ApiextensionsV1Api(api)
    names = []
    for path in sorted(CRDS_DIR.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            extensions.patch_custom_resource_definition(
                crd["metadata"]["name"], crd, field_manager="carpool-tests", force=True,
                _content_type="application/apply-patch+yaml",
            )  # fmt: skip
            names.append(crd["metadata"]["name"])
    custom = client.CustomObjectsApi(api)
    deadline = time.monotonic() + timeout_seconds
    for name in names:
        while True:
            crd = extensions.read_custom_resource_definition(name)
            established = any(
                c.type == "Established" and c.status == "True"
                for c in (crd.status.conditions or [])
            )
            if established:
                try:
                    version = crd.spec.versions[0].name
                    plural, group = crd.spec.names.plural, crd.spec.group
                    custom.list_cluster_custom_object(group, version, plural, limit=1)
                    break
                except client.ApiException as error:
                    if error.status != 404:
                        raise
            if time.monotonic() > deadline:
                raise AssertionError(f"CRD {name} not served after {timeout_seconds:.0f}s")
            time.sleep(0.2)
    return names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        namespaces: Sequence[str] = (),
        priority: int | None = None,
        peering: str = "carpool",
        resync_seconds: float = 60.0,
        peering_lifetime_seconds: int = 60,
        extra_args: Sequence[str] = (),
    ):
        self.kubeconfig, self.log_path = kubeconfig, log_path
        self.metrics_port, self.health_port = free_port(), free_port()
        self.args = [
            "--metrics-port", str(self.metrics_port),
            "--health-port", str(self.health_port),
            "--bind-address", "127.0.0.1",
            "--peering", peering,
            "--resync-seconds", str(resync_seconds),
            "--peering-lifetime-seconds", str(peering_lifetime_seconds),
            *[arg for ns in namespaces for arg in ("--namespace", ns)],
            *([] if priority is None else ["--priority", str(priority)]),
            *extra_args,
        ]  # fmt: skip
        self.process: subprocess.Popen | None = None

    def start(self, timeout_seconds: float = 60.0) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "carpool_cli.main", "operator", *self.args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"operator exited with {self.process.returncode}:\n{self.log()}"
                )
            if self.healthy():
                return self
            time.sleep(0.25)
        raise AssertionError(f"operator not healthy after {timeout_seconds:.0f}s:\n{self.log()}")

    def _get(self, port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.read().decode()

    def healthy(self) -> bool:
        try:
            self._get(self.health_port, "/healthz")
        except OSError:
            return False
        return True

    def metrics_text(self) -> str:
        return self._get(self.metrics_port, "/metrics")

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def metric_reaches(self, name: str, at_least: float, timeout_seconds: float = 30.0) -> float:
        """Wait for a counter to reach `at_least`. A reconcile is counted when it ends, after its
        status patch and Events: a test that saw the status may read the counter a moment early."""

        def reached() -> float | None:
            value = self.metric(name)
            return value if value >= at_least else None

        return wait_for(f"{name} >= {at_least}", reached, timeout_seconds)

    def log(self, last_lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-last_lines:])
        except OSError:
            return ""

    def _end(self, signum: int, timeout_seconds: float) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def stop(self, timeout_seconds: float = 30.0) -> None:
        self._end(signal.SIGTERM, timeout_seconds)

    def kill(self) -> None:
        self._end(signal.SIGKILL, 10.0)
