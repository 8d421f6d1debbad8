"""The operator against the real control plane, under its own least-privilege identity.

One operator process serves this module's namespace (started once: the suite shares two CPU
cores); each test uses its own pool. Worker pods stay Pending (no nodes): reconcile does not
need them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

from carpool_cluster.testing import wait_for
from carpool_operator import limits
from carpool_operator.kube import Kube

from .operator_support import (
    ACCOUNT,
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    delete_pools,
)

NAMESPACE_PREFIX = "op"
OWNED = {
    "Deployment": "{}-worker",
    "Service": "{}",
    "ConfigMap": "{}-limits",
    "Secret": "{}-admin",
    "PodDisruptionBudget": "{}-worker",
}


@pytest.fixture(scope="module")
def operator(api, ns, operator_kubeconfig, tmp_path_factory) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(operator_kubeconfig, log, namespaces=[ns], resync_seconds=5)
    process.start()
    yield process
    delete_pools(api, ns)  # while the operator runs, so their finalizers are released
    process.stop()


@pytest.fixture(scope="module")
def kube(api) -> Kube:
    return Kube(api)


def _pool(name: str, **spec_changes: Any) -> dict[str, Any]:
    spec = {
        "model": {"preset": "tiny"},
        "worker": {
            "image": "ghcr.io/example/carpool-worker:0.1.0",
            "resources": {"limits": {"nvidia.com/gpu": 1}},
            "kvCacheSlots": 128,  # the offline endpoint's batch reaches 128
        },
        "replicas": {"min": 1, "max": 4},
        "endpoints": [
            {"name": "inline-completion", "priority": 100, "sla": {"ttftP95Milliseconds": 300}},
            {"name": "nightly-labeling", "batching": {"maxBatchSize": {"min": 8, "max": 128}}},
        ],
    }
    spec.update(spec_changes)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferencePool",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip


def _create_pool(api, ns, name, **spec_changes) -> dict:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, _pool(name, **spec_changes)
    )


def _patch_pool(api, ns, name, patch: dict) -> dict:
    return client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, patch,
        _content_type="application/merge-patch+json",
    )  # fmt: skip


def _condition(pool: dict | None, type_: str) -> dict | None:
    for condition in ((pool or {}).get("status") or {}).get("conditions") or []:
        if condition["type"] == type_:
            return condition
    return None


def _reconciled(kube: Kube, ns: str, name: str, generation: int = 1) -> dict:
    def probe():
        pool = kube.get("InferencePool", ns, name)
        status = (pool or {}).get("status") or {}
        reconciled = _condition(pool, "Reconciled")
        if status.get("observedGeneration") == generation and reconciled:
            return pool if reconciled["status"] == "True" else None
        return None

    return wait_for(f"pool {name} reconciled at generation {generation}", probe, 60)


def _owned(kube: Kube, ns: str, pool: str) -> dict[str, dict | None]:
    return {kind: kube.get(kind, ns, pattern.format(pool)) for kind, pattern in OWNED.items()}


def _delete(api, kind: str, ns: str, name: str) -> None:
    delete = {
        "Deployment": client.AppsV1Api(api).delete_namespaced_deployment,
        "Service": client.CoreV1Api(api).delete_namespaced_service,
        "ConfigMap": client.CoreV1Api(api).delete_namespaced_config_map,
        "Secret": client.CoreV1Api(api).delete_namespaced_secret,
        "PodDisruptionBudget": client.PolicyV1Api(api).delete_namespaced_pod_disruption_budget,
    }[kind]
    delete(name, ns)


def _events(api, ns: str, pool: str) -> list[client.CoreV1Event]:
    events = client.CoreV1Api(api).list_namespaced_event(ns).items
    return [e for e in events if e.involved_object.name == pool and e.involved_object.kind
            == "InferencePool"]  # fmt: skip


def test_create_makes_every_owned_object_with_the_pool_as_owner(api, ns, operator, kube):
    created = _create_pool(api, ns, "fresh")
    _reconciled(kube, ns, "fresh")
    for kind, obj in _owned(kube, ns, "fresh").items():
        assert obj is not None, kind
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == (
            "InferencePool",
            created["metadata"]["uid"],
            True,
        ), kind


def test_first_visit_sets_observed_generation_and_conditions(api, ns, operator, kube):
    _create_pool(api, ns, "first-visit")
    pool = _reconciled(kube, ns, "first-visit")
    status = pool["status"]
    kinds = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert kinds == {
        "Ready": ("False", "NoReadyWorkers"),
        "Reconciled": ("True", "Applied"),
        "ScalerConflict": ("False", "NoExternalScaler"),
        "MetricsAvailable": ("Unknown", "AwaitingFirstObservation"),
        "SLAMet": ("Unknown", "AwaitingFirstObservation"),
    }
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])
    assert status["desiredReplicas"] == 1
    assert (
        status["selector"] == "app.kubernetes.io/name=carpool-worker,carpool.dev/pool=first-visit"
    )


def test_kopf_bookkeeping_stays_out_of_status(api, ns, operator, kube):
    _create_pool(api, ns, "bookkeeping")
    pool = _reconciled(kube, ns, "bookkeeping")
    # kopf's default would be status.kopf and a key per handler id; none of them is here.
    assert not {"kopf", "pool", "resync", "control"} & set(pool["status"])
    wait_for(
        "kopf's diff base in an annotation",
        lambda: (
            "carpool.dev/last-handled-configuration"
            in (kube.get("InferencePool", ns, "bookkeeping")["metadata"].get("annotations") or {})
        ),
    )


def test_limits_configmap_holds_the_document_built_from_the_spec(api, ns, operator, kube):
    _create_pool(api, ns, "limits-doc")
    _reconciled(kube, ns, "limits-doc")
    configmap = kube.get("ConfigMap", ns, "limits-doc-limits")
    document = json.loads(configmap["data"]["limits.json"])
    assert document["version"] == 1
    assert document["defaultEndpoint"] == "inline-completion"
    assert document["endpoints"]["nightly-labeling"] == {
        "priority": 0, "maxBatchSize": 128, "batchWindowMilliseconds": 5,
        "maxQueueWaitMilliseconds": 2000, "maxQueueLength": 256,
    }  # fmt: skip


def test_created_objects_are_announced_as_events(api, ns, operator, kube):
    _create_pool(api, ns, "announced")
    _reconciled(kube, ns, "announced")

    def created_messages():
        messages = {e.message for e in _events(api, ns, "announced") if e.reason == "Created"}
        return messages if len(messages) >= 5 else None

    messages = wait_for("Created events for the five owned objects", created_messages)
    assert "created Deployment announced-worker" in messages
    assert "created Secret announced-admin" in messages


def test_image_change_updates_only_the_deployment_template(api, ns, operator, kube):
    _create_pool(api, ns, "rollout")
    _reconciled(kube, ns, "rollout")
    # Someone else's field: server-side apply must leave it alone.
    note = {"metadata": {"annotations": {"example.com/owner-note": "kept"}}}
    kube.merge_patch("Deployment", ns, "rollout-worker", note)
    before = _owned(kube, ns, "rollout")
    _patch_pool(api, ns, "rollout", {"spec": {"worker": {"image": "example/worker:0.2.0"}}})
    _reconciled(kube, ns, "rollout", generation=2)
    after = _owned(kube, ns, "rollout")

    deployment = after["Deployment"]
    assert (
        deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "example/worker:0.2.0"
    )
    assert (
        deployment["metadata"]["generation"] == before["Deployment"]["metadata"]["generation"] + 1
    )
    assert deployment["metadata"]["annotations"]["example.com/owner-note"] == "kept"
    assert deployment["spec"]["replicas"] == before["Deployment"]["spec"]["replicas"]
    old_template = before["Deployment"]["spec"]["template"]
    old_template["spec"]["containers"][0]["image"] = "example/worker:0.2.0"
    assert deployment["spec"]["template"] == old_template
    for kind in ("Service", "ConfigMap", "Secret", "PodDisruptionBudget"):
        assert (
            after[kind]["metadata"]["resourceVersion"]
            == (before[kind]["metadata"]["resourceVersion"])
        ), kind


def test_endpoint_change_updates_the_limits_but_not_the_deployment(api, ns, operator, kube):
    _create_pool(api, ns, "retune")
    _reconciled(kube, ns, "retune")
    before = _owned(kube, ns, "retune")
    endpoints = _pool("retune")["spec"]["endpoints"]
    endpoints[1]["priority"] = 10
    _patch_pool(api, ns, "retune", {"spec": {"endpoints": endpoints}})
    pool = _reconciled(kube, ns, "retune", generation=2)
    after = _owned(kube, ns, "retune")
    document = limits.parse(after["ConfigMap"]["data"]["limits.json"])
    assert document["endpoints"]["nightly-labeling"]["priority"] == 10
    assert document["version"] == 2 == pool["status"]["limitsVersion"]
    assert (
        after["Deployment"]["metadata"]["resourceVersion"]
        == (before["Deployment"]["metadata"]["resourceVersion"])
    )


@pytest.mark.parametrize("kind", list(OWNED))
def test_deleted_owned_object_is_restored(api, ns, operator, kube, kind):
    name = f"restore-{kind.lower()}"
    _create_pool(api, ns, name)
    _reconciled(kube, ns, name)
    old = _owned(kube, ns, name)[kind]
    object_name = OWNED[kind].format(name)
    _delete(api, kind, ns, object_name)

    def recreated():
        obj = kube.get(kind, ns, object_name)
        return obj if obj and obj["metadata"]["uid"] != old["metadata"]["uid"] else None

    restored = wait_for(f"{kind} {object_name} to be recreated", recreated)
    assert restored["metadata"]["ownerReferences"][0]["name"] == name
    wait_for(
        f"a Restored event for {kind}",
        lambda: any(e.reason == "Restored" and kind in e.message for e in _events(api, ns, name)),
    )


EDITS = {
    "Deployment": (
        {"spec": {"template": {"metadata": {"annotations": {"prometheus.io/scrape": "false"}}}}},
        lambda obj: (
            obj["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        ),
    ),
    "Service": (
        {"spec": {"ports": [{"name": "http", "port": 9999, "targetPort": "http"}]}},
        lambda obj: [p["port"] for p in obj["spec"]["ports"]] == [8000],
    ),
    "ConfigMap": (
        {"data": {"limits.json": '{"version": 1, "endpoints": {}}'}},
        lambda obj: "inline-completion" in limits.parse(obj["data"]["limits.json"])["endpoints"],
    ),
    "PodDisruptionBudget": (
        {"spec": {"maxUnavailable": 0}},
        lambda obj: obj["spec"]["maxUnavailable"] == 1,
    ),
}


@pytest.mark.parametrize("kind", list(EDITS))
def test_edited_owned_object_is_restored(api, ns, operator, kube, kind):
    name = f"edit-{kind.lower()}"
    _create_pool(api, ns, name)
    _reconciled(kube, ns, name)
    patch, restored = EDITS[kind]
    object_name = OWNED[kind].format(name)
    kube.merge_patch(kind, ns, object_name, patch)
    wait_for(f"{kind} {object_name} restored", lambda: restored(kube.get(kind, ns, object_name)))


def test_admin_token_is_never_rotated_by_reconcile(api, ns, operator, kube):
    _create_pool(api, ns, "token")
    _reconciled(kube, ns, "token")
    token = kube.get("Secret", ns, "token-admin")["data"]["token"]
    assert len(token) >= 40
    _patch_pool(api, ns, "token", {"spec": {"worker": {"image": "example/worker:0.3.0"}}})
    _reconciled(kube, ns, "token", generation=2)
    time.sleep(6)  # one resync period: the timer must not rotate it either
    assert kube.get("Secret", ns, "token-admin")["data"]["token"] == token


def _pool_series(operator: OperatorProcess, ns: str, name: str) -> list[str]:
    """The operator's /metrics samples labelled with one pool."""
    return [
        sample.name
        for family in text_string_to_metric_families(operator.metrics_text())
        for sample in family.samples
        if (sample.labels.get("namespace"), sample.labels.get("pool")) == (ns, name)
    ]


def test_deleted_pool_takes_every_owned_object_and_series_with_it(api, ns, operator, kube):
    _create_pool(api, ns, "doomed")
    _reconciled(kube, ns, "doomed")
    wait_for("the control loop's series of the pool", lambda: _pool_series(operator, ns, "doomed"))
    client.CustomObjectsApi(api).delete_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, "doomed"
    )
    wait_for(
        "garbage collection of the pool's objects",
        lambda: all(obj is None for obj in _owned(kube, ns, "doomed").values()),
        timeout_seconds=90,
    )
    # A series left behind would keep its last value, and an alert on it firing, for ever.
    wait_for(
        "the pool's series gone from the operator's metrics",
        lambda: not _pool_series(operator, ns, "doomed"),
        timeout_seconds=60,
    )


def test_manual_mode_holds_manual_replicas_and_follows_kubectl_scale(api, ns, operator, kube):
    _create_pool(api, ns, "manual", scaling={"mode": "Manual", "manualReplicas": 2})
    _reconciled(kube, ns, "manual")
    replicas = lambda: kube.get("Deployment", ns, "manual-worker")["spec"]["replicas"]  # noqa: E731
    wait_for("2 workers", lambda: replicas() == 2)
    client.CustomObjectsApi(api).patch_namespaced_custom_object_scale(
        GROUP, VERSION, ns, PLURAL, "manual", {"spec": {"replicas": 3}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    wait_for("3 workers after scaling the pool", lambda: replicas() == 3)


def test_auto_mode_brings_a_hand_scaled_deployment_back_within_bounds(api, ns, operator, kube):
    _create_pool(api, ns, "bounded", replicas={"min": 1, "max": 3})
    _reconciled(kube, ns, "bounded")
    kube.merge_patch("Deployment", ns, "bounded-worker", {"spec": {"replicas": 7}})
    wait_for(
        "the worker count clamped to replicas.max",
        lambda: kube.get("Deployment", ns, "bounded-worker")["spec"]["replicas"] == 3,
    )


def test_hpa_on_the_worker_deployment_is_reported_not_fought(api, ns, operator, kube):
    _create_pool(api, ns, "contested", scaling={"mode": "Manual", "manualReplicas": 2})
    _reconciled(kube, ns, "contested")
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "gpu-utilization"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                               "name": "contested-worker"},
            "minReplicas": 3,
            "maxReplicas": 4,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
        },
    }  # fmt: skip
    autoscaling = client.AutoscalingV2Api(api)
    autoscaling.create_namespaced_horizontal_pod_autoscaler(ns, hpa)

    def conflict_reported():
        condition = _condition(kube.get("InferencePool", ns, "contested"), "ScalerConflict")
        return condition if condition and condition["status"] == "True" else None

    conflict = wait_for("ScalerConflict=True", conflict_reported)
    assert conflict["reason"] == "HorizontalPodAutoscalerFound"
    assert "HorizontalPodAutoscaler/gpu-utilization" in conflict["message"]
    wait_for(
        "an ExternalScalerFound warning",
        lambda: any(e.reason == "ExternalScalerFound" and e.type == "Warning"
                    for e in _events(api, ns, "contested")),
    )  # fmt: skip
    # The autoscaler's count wins while it exists (written here as its controller would).
    kube.merge_patch("Deployment", ns, "contested-worker", {"spec": {"replicas": 3}})
    deadline = time.monotonic() + 12  # over two resync periods
    while time.monotonic() < deadline:
        assert kube.get("Deployment", ns, "contested-worker")["spec"]["replicas"] == 3
        time.sleep(1)
    autoscaling.delete_namespaced_horizontal_pod_autoscaler("gpu-utilization", ns)
    wait_for(
        "ScalerConflict=False and the manual count back",
        lambda: (
            _condition(kube.get("InferencePool", ns, "contested"), "ScalerConflict")["status"]
            == "False"
            and kube.get("Deployment", ns, "contested-worker")["spec"]["replicas"] == 2
        ),
    )


def test_operator_runs_as_its_service_account_with_only_its_rules(operator_kubeconfig, ns):
    identity = config.new_client_from_config(config_file=str(operator_kubeconfig))
    review = client.AuthenticationV1Api(identity).create_self_subject_review({})
    assert review.status.user_info.username == f"system:serviceaccount:{ns}:{ACCOUNT}"
    authorization = client.AuthorizationV1Api(identity)

    def can(verb: str, resource: str, group: str = "") -> bool:
        attributes = {"verb": verb, "resource": resource, "group": group, "namespace": ns}
        body = {"spec": {"resourceAttributes": attributes}}
        return authorization.create_self_subject_access_review(body).status.allowed

    assert can("patch", "deployments", "apps")
    assert not can("list", "secrets")
    assert not can("delete", "deployments", "apps")
    assert not can("create", "pods")


def test_owned_objects_are_written_by_the_operators_field_manager(api, ns, operator, kube):
    _create_pool(api, ns, "managed")
    _reconciled(kube, ns, "managed")
    fields = kube.get("Deployment", ns, "managed-worker")["metadata"]["managedFields"]
    appliers = {(f["manager"], f["operation"]) for f in fields}
    assert ("carpool-operator", "Apply") in appliers
    assert ("carpool-scaler", "Apply") in appliers


def test_metrics_count_reconciles_and_health_answers(api, ns, operator, kube):
    _create_pool(api, ns, "counted")
    _reconciled(kube, ns, "counted")
    assert operator.healthy()
    operator.metric_reaches("carpool_operator_reconciles_total", 1)
    operator.metric_reaches("carpool_operator_reconcile_duration_seconds_count", 1)
    assert operator.metric("carpool_operator_objects_applied_total") >= 5


# The part of KEDA's ScaledObject CRD the operator reads (scaleTargetRef); KEDA itself is not
# installed. The operator starts without the CRD (ScaledObjects then list as none) and must
# find them once it appears, and keep running when it goes away again.
SCALED_OBJECT_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "scaledobjects.keda.sh"},
    "spec": {
        "group": "keda.sh",
        "scope": "Namespaced",
        "names": {"kind": "ScaledObject", "plural": "scaledobjects", "singular": "scaledobject"},
        "versions": [{
            "name": "v1alpha1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True}},
        }],
    },
}  # fmt: skip


@pytest.fixture
def scaled_object_crd(api) -> Iterator[None]:
    extensions = client.ApiextensionsV1Api(api)
    extensions.create_custom_resource_definition(SCALED_OBJECT_CRD)
    custom = client.CustomObjectsApi(api)
    wait_for(
        "the ScaledObject CRD served",
        lambda: (
            custom.list_cluster_custom_object("keda.sh", "v1alpha1", "scaledobjects") is not None
        ),
    )
    yield
    try:
        extensions.delete_custom_resource_definition("scaledobjects.keda.sh")
    except client.ApiException as error:
        if error.status != 404:
            raise


def test_scaled_object_installed_after_start_is_reported(
    api, ns, operator, kube, scaled_object_crd
):
    _create_pool(api, ns, "keda-target")
    _reconciled(kube, ns, "keda-target")
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "queue-length"},
        "spec": {"scaleTargetRef": {"name": "keda-target-worker"}, "maxReplicaCount": 4},
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "keda.sh", "v1alpha1", ns, "scaledobjects", scaled
    )

    def conflict_reported():
        condition = _condition(kube.get("InferencePool", ns, "keda-target"), "ScalerConflict")
        return condition if condition and condition["status"] == "True" else None

    conflict = wait_for("ScalerConflict=True for the ScaledObject", conflict_reported)
    assert conflict["reason"] == "ScaledObjectFound"
    assert "ScaledObject/queue-length" in conflict["message"]
    client.ApiextensionsV1Api(api).delete_custom_resource_definition("scaledobjects.keda.sh")
    wait_for(
        "ScalerConflict=False once the ScaledObject is gone with its CRD",
        lambda: (
            _condition(kube.get("InferencePool", ns, "keda-target"), "ScalerConflict")["status"]
            == "False"
        ),
    )
    assert operator.healthy()
