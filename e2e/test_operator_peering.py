"""Restarts and replicas: the operator converges after a restart with no duplicates, and of two
replicas exactly one acts (kopf peering) until it dies, when the other takes over.

Each test runs its own operator processes under the operator's RBAC identity, with its own
peering object, and deletes its pools while an operator still runs (their finalizers need it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client

from carpool_cluster.testing import wait_for
from carpool_operator.kube import Kube

from .operator_support import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    delete_pools,
)

NAMESPACE_PREFIX = "peer"
RECONCILES = "carpool_operator_reconciles_total"


@pytest.fixture
def kube(api) -> Kube:
    return Kube(api)


def _operator(kubeconfig: Path, ns: str, tmp_path: Path, name: str, **options) -> OperatorProcess:
    return OperatorProcess(kubeconfig, tmp_path / f"{name}.log", namespaces=[ns], **options)


def _create_pool(api, ns: str, name: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferencePool",
        "metadata": {"name": name},
        "spec": {
            "model": {"preset": "tiny"},
            "worker": {"image": "ghcr.io/example/carpool-worker:0.1.0"},
            "endpoints": [{"name": "chat", "sla": {"ttftP95Milliseconds": 500}}],
        },
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)


def _set_image(api, ns: str, name: str, image: str) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, {"spec": {"worker": {"image": image}}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip


def _reconciled(kube: Kube, ns: str, name: str, generation: int) -> dict:
    def probe():
        pool = kube.get("InferencePool", ns, name)
        status = (pool or {}).get("status") or {}
        return pool if status.get("observedGeneration") == generation else None

    return wait_for(f"pool {name} reconciled at generation {generation}", probe, 90)


def test_restart_converges_with_no_duplicates(api, ns, operator_kubeconfig, kube, tmp_path):
    operator = _operator(operator_kubeconfig, ns, tmp_path, "first", peering="restart").start()
    try:
        _create_pool(api, ns, "survivor")
        _reconciled(kube, ns, "survivor", 1)
        token = kube.get("Secret", ns, "survivor-admin")["data"]["token"]
    finally:
        operator.stop()

    # While no operator runs, the spec changes and an owned object disappears.
    _set_image(api, ns, "survivor", "example/worker:0.2.0")
    client.CoreV1Api(api).delete_namespaced_config_map("survivor-limits", ns)

    operator = _operator(operator_kubeconfig, ns, tmp_path, "second", peering="restart").start()
    try:
        _reconciled(kube, ns, "survivor", 2)
        selector = "carpool.dev/pool=survivor,app.kubernetes.io/managed-by=carpool-operator"
        for kind in ("Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"):
            assert len(kube.list(kind, ns, label_selector=selector)) == 1, kind
        deployment = kube.get("Deployment", ns, "survivor-worker")
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
            "example/worker:0.2.0"
        )
        assert kube.get("Secret", ns, "survivor-admin")["data"]["token"] == token
        delete_pools(api, ns)
    finally:
        operator.stop()


def test_of_two_replicas_one_acts_and_the_other_takes_over_when_it_dies(
    api, ns, operator_kubeconfig, kube, tmp_path
):
    lifetime = {"peering": "pair", "peering_lifetime_seconds": 10}
    active = _operator(
        operator_kubeconfig, ns, tmp_path, "active", priority=200, **lifetime
    ).start()
    standby = _operator(
        operator_kubeconfig, ns, tmp_path, "standby", priority=100, **lifetime
    ).start()
    try:
        wait_for(
            "both replicas in the peering object",
            lambda: len((kube.get("KopfPeering", ns, "pair") or {}).get("status") or {}) == 2,
        )
        _create_pool(api, ns, "shared")
        _reconciled(kube, ns, "shared", 1)
        _set_image(api, ns, "shared", "example/worker:0.2.0")
        _reconciled(kube, ns, "shared", 2)
        active.metric_reaches(RECONCILES, 2)
        assert standby.metric(RECONCILES) == 0
        assert "Resuming operations" not in standby.log(last_lines=1000)

        active.kill()  # a crash: it never says goodbye in the peering object
        _set_image(api, ns, "shared", "example/worker:0.3.0")
        _reconciled(kube, ns, "shared", 3)
        standby.metric_reaches(RECONCILES, 1)
        deployment = kube.get("Deployment", ns, "shared-worker")
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == (
            "example/worker:0.3.0"
        )
        delete_pools(api, ns)
    finally:
        active.stop()
        standby.stop()
