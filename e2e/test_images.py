"""The container images, built from this checkout and run with podman.

The module builds both images first (images/build.sh: a no-op when podman's layer cache is
current, so `make images` before the tests costs nothing twice), then runs each as the cluster
would: as uid 65532 with a read-only root filesystem, a writable /tmp and no capabilities, on the
host's network.

- The operator image reconciles a pool against the cluster under the chart's RBAC: it gets only
  a kubeconfig with the token of a ServiceAccount bound to charts/carpool/files/operator-rbac.yaml.
- The worker image serves the tiny model on the CPU: /readyz, then a completion.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from carpool_cluster import testing
from carpool_cluster.testing import wait_for

from .operator_support import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    delete_pools,
    free_port,
    install_crds,
    operator_identity,
)

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "images" / "build.sh"
PODMAN = REPO / "images" / "podman.sh"
CHART = REPO / "charts" / "carpool"
# How the chart and the operator's worker pods run their containers (securityContext).
AS_IN_A_POD = [
    "--network", "host",
    "--read-only", "--tmpfs", "/tmp:rw,exec,mode=1777",
    "--cap-drop", "all", "--security-opt", "no-new-privileges",
]  # fmt: skip
# A cold build downloads torch's CUDA wheels; `make test` builds the images before the tests.
pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """{"operator": name:tag, "worker": name:tag}, built (or found current) by images/build.sh."""
    log = tmp_path_factory.mktemp("images") / "build.log"
    with open(log, "wb") as stderr:
        result = subprocess.run([str(BUILD)], stdout=subprocess.PIPE, stderr=stderr, text=True)
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise AssertionError(f"images/build.sh exited with {result.returncode}:\n{tail}")
    return dict(line.split("=", 1) for line in result.stdout.splitlines())


def _inspect(image: str, template: str) -> str:
    command = [str(PODMAN), "image", "inspect", "--format", template, image]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def _remove_container(name: str) -> None:
    subprocess.run([str(PODMAN), "rm", "--force", "--ignore", name], capture_output=True)


def test_images_are_tagged_with_the_chart_app_version_and_the_chart_defaults_to_them(images):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    repository = values["operator"]["image"]["repository"]
    assert images["operator"] == f"{repository}:{chart['appVersion']}"
    assert images["worker"].endswith(f":{chart['appVersion']}")


@pytest.mark.parametrize("target", ["operator", "worker"])
def test_image_runs_carpool_as_the_unprivileged_user_the_pods_require(images, target):
    assert _inspect(images[target], "{{.Config.User}}") == "65532:65532"
    assert _inspect(images[target], "{{json .Config.Entrypoint}}") == '["carpool"]'
    # The chart and the operator run `carpool operator` and `carpool worker` as the command.
    command = [str(PODMAN), "run", "--rm", *AS_IN_A_POD, images[target], target, "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"usage: carpool {target}" in result.stdout


class OperatorContainer(OperatorProcess):
    """`carpool operator` in the operator image, with the ports and arguments of
    OperatorProcess; stop() sends SIGTERM through `podman run` to the operator."""

    def __init__(self, image: str, kubeconfig: Path, ca_file: Path, log_path: Path, **kwargs):
        super().__init__(kubeconfig, log_path, **kwargs)
        self.image, self.ca_file = image, ca_file
        self.name = f"carpool-operator-{uuid.uuid4().hex[:8]}"

    def start(self, timeout_seconds: float = 180.0) -> OperatorContainer:
        # Like a projected ServiceAccount token: readable by the container's user only.
        kubeconfig = self.log_path.with_name("container.kubeconfig")
        shutil.copyfile(self.kubeconfig, kubeconfig)
        os.chown(kubeconfig, 65532, 65532)
        kubeconfig.chmod(0o400)
        command = [
            str(PODMAN), "run", "--rm", "--name", self.name, *AS_IN_A_POD,
            "--volume", f"{kubeconfig}:/var/run/carpool/kubeconfig:ro",
            "--volume", f"{self.ca_file}:{self.ca_file}:ro",
            "--env", "KUBECONFIG=/var/run/carpool/kubeconfig",
            self.image, "operator", *self.args,
        ]  # fmt: skip
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"operator container exited:\n{self.log()}")
            if self.healthy():
                return self
            time.sleep(0.5)
        raise AssertionError(f"operator container not healthy:\n{self.log()}")


@pytest.fixture
def operator_namespace(api: client.ApiClient) -> Iterator[str]:
    install_crds(api)
    name = testing.create_namespace(api, prefix="img")
    yield name
    client.CoreV1Api(api).delete_namespace(name)


@pytest.fixture
def operator_container(cluster, api, images, operator_namespace, tmp_path) -> Iterator:
    with operator_identity(cluster, api, operator_namespace, tmp_path) as kubeconfig:
        container = OperatorContainer(
            images["operator"], kubeconfig, Path(cluster.ca_file), tmp_path / "operator.log",
            namespaces=[operator_namespace], resync_seconds=5,
        )  # fmt: skip
        try:
            yield container.start()
            delete_pools(api, operator_namespace)  # while it runs: it releases the finalizers
            container.stop()
        finally:
            container.kill()
            _remove_container(container.name)


def test_operator_image_reconciles_a_pool_under_the_charts_rbac(
    api, images, operator_namespace, operator_container
):
    pool = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferencePool",
        "metadata": {"name": "from-image"},
        "spec": {
            "model": {"preset": "tiny"},
            # No node matches: reconcile needs no running pods.
            "worker": {"image": images["worker"], "nodeSelector": {"carpool.dev/node": "none"}},
            "replicas": {"min": 1, "max": 2},
            "endpoints": [{"name": "interactive", "sla": {"ttftP95Milliseconds": 500}}],
        },
    }
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, operator_namespace, PLURAL, pool)

    def reconciled() -> dict | None:
        found = custom.get_namespaced_custom_object(
            GROUP, VERSION, operator_namespace, PLURAL, "from-image"
        )
        status = found.get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or []}
        done = status.get("observedGeneration") == 1 and "Reconciled" in conditions
        return conditions["Reconciled"] if done else None

    condition = wait_for("the pool reconciled by the operator image", reconciled, 120)
    assert condition["status"] == "True", (condition, operator_container.log())
    deployment = client.AppsV1Api(api).read_namespaced_deployment(
        "from-image-worker", operator_namespace
    )
    (container,) = deployment.spec.template.spec.containers
    assert container.image == images["worker"]
    assert container.command == ["carpool", "worker"]
    # The reconcile was the container's: its own /metrics counts it.
    operator_container.metric_reaches("carpool_operator_reconciles_total", 1)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def worker_container(images, tmp_path) -> Iterator[str]:
    """The worker image serving the tiny model on the CPU; yields its base URL once ready."""
    port, name = free_port(), f"carpool-worker-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path / "worker.log"
    command = [
        str(PODMAN), "run", "--rm", "--name", name, *AS_IN_A_POD, images["worker"],
        "worker", "--model", "tiny", "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"worker container exited:\n{log_path.read_text()}")
            try:
                return _get(f"{url}/readyz")[0] == 200
            except OSError:
                return False

        wait_for(f"the worker image's /readyz ({log_path})", ready, 300, 0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        _remove_container(name)


def test_worker_image_serves_the_tiny_model(worker_container):
    request = urllib.request.Request(
        f"{worker_container}/v1/completions",
        data=json.dumps(
            {"prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        body = json.loads(response.read())
    assert body["object"] == "text_completion"
    assert isinstance(body["choices"][0]["text"], str)
    assert 1 <= body["usage"]["completion_tokens"] <= 8
