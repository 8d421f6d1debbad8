"""Fixtures for tests against a real cluster: ``$KUBECONFIG``'s, or a local control plane.

The local control plane is started once per test session (built from the pinned Go modules
on first use). A test that needs it fails, with the reason, when it cannot start; it is never
skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from carpool_cluster import testing

from .operator_support import install_crds, operator_identity

SERVER_VERSION = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[testing.TestCluster]:
    started = testing.provide_cluster(tmp_path_factory.mktemp("carpool"))
    version = client.VersionApi(started.admin_api()).get_code()
    where = "local control plane" if started.local else f"KUBECONFIG={started.kubeconfig}"
    pytestconfig.stash[SERVER_VERSION] = f"{version.git_version} ({version.platform}, {where})"
    try:
        yield started
    finally:
        started.close()


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """Say which Kubernetes the e2e tests ran against, in every test run's output."""
    if SERVER_VERSION in config.stash:
        terminalreporter.write_line(f"kube-apiserver version: {config.stash[SERVER_VERSION]}")


@pytest.fixture(scope="session")
def api(cluster: testing.TestCluster) -> client.ApiClient:
    return cluster.admin_api()


@pytest.fixture
def namespace(api: client.ApiClient) -> Iterator[str]:
    name = testing.create_namespace(api)
    yield name
    client.CoreV1Api(api).delete_namespace(name)


@pytest.fixture
def identity_kubeconfig(cluster: testing.TestCluster, api: client.ApiClient, tmp_path: Path):
    """``identity_kubeconfig(account=..., account_namespace=..., rules=[...],
    role_namespace=None)`` → kubeconfig Path for a ServiceAccount with exactly those rules."""

    def make(**kwargs) -> Path:
        return testing.identity_kubeconfig(cluster, api, tmp_path, **kwargs)

    return make


@pytest.fixture(scope="module")
def ns(api: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """One test module's namespace for its operator and pools, with the CRDs installed. It is
    named after the module's `NAMESPACE_PREFIX`, so a leftover says which module left it."""
    install_crds(api)
    name = testing.create_namespace(api, prefix=getattr(request.module, "NAMESPACE_PREFIX", "e2e"))
    yield name
    client.CoreV1Api(api).delete_namespace(name)


@pytest.fixture(scope="module")
def operator_kubeconfig(
    cluster: testing.TestCluster,
    api: client.ApiClient,
    ns: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    """The kubeconfig of the operator's ServiceAccount in `ns`, bound to exactly the chart's
    RBAC rules: the identity every operator under test runs as."""
    with operator_identity(cluster, api, ns, tmp_path_factory.mktemp("identity")) as path:
        yield path


@pytest.fixture(scope="session")
def prometheus_url(cluster: testing.TestCluster) -> str:
    return cluster.prometheus_url()


@pytest.fixture(scope="session")
def gpu_nodes(cluster: testing.TestCluster) -> None:
    """Two Ready nodes with two GPUs each whose pods run as local processes."""
    cluster.ensure_gpu_nodes(nodes=2, gpus_per_node=2)
