"""The API server itself refuses a bad InferencePool, with a message that says what to fix.

No operator runs here: everything is the CRD's structural schema, defaults and CEL rules, as
kube-apiserver enforces them. Requests use fieldValidation=Strict, as kubectl does.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from carpool_cluster import testing

from .operator_support import install_crds

GROUP, VERSION, PLURAL = "carpool.dev", "v1alpha1", "inferencepools"

VALID: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "InferencePool",
    "metadata": {"name": "pool"},
    "spec": {
        "model": {"preset": "tiny"},
        # 128 slots: the offline endpoint's batch of up to 128 sequences must fit in a worker.
        "worker": {"image": "ghcr.io/example/carpool-worker:0.1.0", "kvCacheSlots": 128},
        "replicas": {"min": 1, "max": 4},
        "endpoints": [
            {
                "name": "inline-completion",
                "priority": 100,
                "sla": {"ttftP95Milliseconds": 300},
                "batching": {"batchWindowMilliseconds": {"max": 5}},
            },
            {"name": "nightly-labeling", "batching": {"maxBatchSize": {"min": 8, "max": 128}}},
        ],
    },
}


@pytest.fixture(scope="module")
def pools_namespace(api: client.ApiClient) -> Iterator[str]:
    install_crds(api)
    name = testing.create_namespace(api, prefix="api")
    yield name
    client.CoreV1Api(api).delete_namespace(name)


@pytest.fixture(scope="module")
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def _create(custom: client.CustomObjectsApi, namespace: str, body: dict) -> dict:
    return custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, field_validation="Strict"
    )


def _refusal(custom: client.CustomObjectsApi, namespace: str, body: dict) -> str:
    with pytest.raises(client.ApiException) as refused:
        _create(custom, namespace, body)
    assert refused.value.status in (400, 422), refused.value.body
    return json.loads(refused.value.body)["message"]


def _spec(change: Callable[[dict], None], name: str = "pool") -> dict:
    body = copy.deepcopy(VALID)
    body["metadata"]["name"] = name
    change(body["spec"])
    return body


def _endpoint(**fields: Any) -> dict:
    return {"name": "e", **fields}


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """A change that sets spec.<path> (dotted; digits index lists) to value."""

    def change(spec: dict) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        node: Any = spec
        for key in keys[:-1]:
            node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
        node[keys[-1]] = value

    return change


def _delete(path: str) -> Callable[[dict], None]:
    def change(spec: dict) -> None:
        keys = path.split(".")
        node = spec
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[keys[-1]]

    return change


INVALID: list[tuple[str, Callable[[dict], None], list[str]]] = [
    ("replicas min above max", _set("replicas", {"min": 5, "max": 2}),
     ["spec.replicas", "replicas.min must not exceed replicas.max"]),
    ("replicas min above the default max", _set("replicas", {"min": 10}),
     ["replicas.min must not exceed replicas.max (which is 8 when not set)"]),
    ("duplicate endpoint names",
     _set("endpoints", [_endpoint(name="chat"), _endpoint(name="chat")]),
     ["spec.endpoints[1]", "Duplicate value", "chat"]),
    ("sla of zero", _set("endpoints.0.sla.ttftP95Milliseconds", 0),
     ["spec.endpoints[0].sla.ttftP95Milliseconds", "greater than or equal to 1"]),
    ("negative sla", _set("endpoints.0.sla.ttftP95Milliseconds", -300),
     ["spec.endpoints[0].sla.ttftP95Milliseconds", "greater than or equal to 1"]),
    ("batch size bounds inverted",
     _set("endpoints.1.batching.maxBatchSize", {"min": 64, "max": 8}),
     ["spec.endpoints[1].batching.maxBatchSize",
      "batching.maxBatchSize.min must not exceed batching.maxBatchSize.max"]),
    ("batch size min above the default max",
     _set("endpoints.1.batching.maxBatchSize", {"min": 32}),
     ["batching.maxBatchSize.min must not exceed batching.maxBatchSize.max (which is 16 when not "
      "set)"]),
    ("batch window bounds inverted",
     _set("endpoints.1.batching.batchWindowMilliseconds", {"min": 50, "max": 10}),
     ["batching.batchWindowMilliseconds.min must not exceed batching.batchWindowMilliseconds.max "
      "(which is 5 when not set)"]),
    ("window longer than the sla it serves",
     _set("endpoints.0.batching.batchWindowMilliseconds", {"max": 500}),
     ["spec.endpoints[0]", "endpoint inline-completion: batching.batchWindowMilliseconds.max",
      "must be shorter than the SLA it serves, sla.ttftP95Milliseconds"]),
    ("sla no longer than the default batch window",
     _set("endpoints", [_endpoint(sla={"ttftP95Milliseconds": 5})]),
     ["endpoint e: batching.batchWindowMilliseconds.max (5 ms when not set) must be shorter than "
      "the SLA it serves"]),
    ("window equal to the sla", _set("endpoints.0.batching.batchWindowMilliseconds", {"max": 300}),
     ["must be shorter than the SLA it serves"]),
    ("empty sla", _set("endpoints.0.sla", {}),
     ["sla: set sla.ttftP95Milliseconds, sla.queueWaitP95Milliseconds or both"]),
    ("queue budget not below the ttft budget",
     _set("endpoints.0.sla", {"ttftP95Milliseconds": 300, "queueWaitP95Milliseconds": 300}),
     ["sla.queueWaitP95Milliseconds must be below sla.ttftP95Milliseconds"]),
    ("queue budget of zero", _set("endpoints.0.sla.queueWaitP95Milliseconds", 0),
     ["spec.endpoints[0].sla.queueWaitP95Milliseconds", "greater than or equal to 1"]),
    ("queue budget no longer than the default batch window",
     _set("endpoints", [_endpoint(sla={"queueWaitP95Milliseconds": 5})]),
     ["endpoint e: batching.batchWindowMilliseconds.max (5 ms when not set) must be shorter than "
      "sla.queueWaitP95Milliseconds"]),
    ("unknown field", _set("worker.imagee", "typo"), ['unknown field "spec.worker.imagee"']),
    ("too many endpoints", _set("endpoints", [_endpoint(name=f"e{i}") for i in range(17)]),
     ["spec.endpoints", "must have at most 16 items"]),
    ("no endpoints", _set("endpoints", []), ["spec.endpoints", "at least 1 items"]),
    ("endpoint name not a dns label", _set("endpoints.0.name", "Inline_Completion"),
     ["endpoint name Inline_Completion must be a DNS label"]),
    ("endpoint name too long", _set("endpoints.0.name", "e" * 64),
     ["spec.endpoints[0].name", "Too long", "63"]),
    ("two default endpoints",
     _set("endpoints", [_endpoint(name="a", default=True), _endpoint(name="b", default=True)]),
     ["at most one endpoint may set default: true"]),
    ("unknown scaling mode", _set("scaling.mode", "Turbo"),
     ["spec.scaling.mode", 'Unsupported value: "Turbo"', '"Auto"', '"Recommend"', '"Manual"']),
    ("manual replicas without manual mode", _set("scaling.manualReplicas", 2),
     ["scaling.manualReplicas is only used when scaling.mode is Manual (this pool is Auto)"]),
    ("manual mode without manual replicas", _set("scaling.mode", "Manual"),
     ["scaling.mode Manual needs scaling.manualReplicas"]),
    ("manual replicas above max", _set("scaling", {"mode": "Manual", "manualReplicas": 9}),
     ["spec.scaling.manualReplicas", "scaling.manualReplicas must not exceed replicas.max"]),
    ("manual replicas above the default max",
     lambda spec: (spec.pop("replicas"), spec.update(scaling={"mode": "Manual",
                                                             "manualReplicas": 9})),
     ["scaling.manualReplicas must not exceed replicas.max (which is 8 when not set)"]),
    ("model with preset and path", _set("model", {"preset": "tiny", "path": "/models/x"}),
     ["set exactly one of model.preset (tiny, bench-1b, bench-8b) or model.path"]),
    ("model with neither preset nor path", _set("model", {}),
     ["set exactly one of model.preset"]),
    ("unknown preset", _set("model", {"preset": "gpt-9"}),
     ["spec.model.preset", 'Unsupported value: "gpt-9"', '"bench-1b"']),
    ("relative model path", _set("model", {"path": "models/llama"}),
     ["model.path must be an absolute path"]),
    ("volume without a path",
     _set("model", {"preset": "tiny", "volume": {"emptyDir": {}}}),
     ["model.volume is mounted at model.path"]),
    ("priority above 1000", _set("endpoints.0.priority", 1001),
     ["spec.endpoints[0].priority", "less than or equal to 1000"]),
    ("privileged worker port", _set("worker.port", 80),
     ["spec.worker.port", "greater than or equal to 1024"]),
    ("worker without an image", _delete("worker.image"), ["spec.worker.image", "Required value"]),
    ("blank image", _set("worker.image", " "),
     ["worker.image must be an image reference without spaces"]),
    ("image with a trailing space", _set("worker.image", "example/worker:0.1.0 "),
     ["worker.image must be an image reference without spaces"]),
    ("blank env name", _set("worker.env", [{"name": " ", "value": "1"}]),
     ["worker.env:", "is not a variable name"]),
    ("env with value and valueFrom",
     _set("worker.env", [{"name": "TOKEN", "value": "x",
                          "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
     ["worker.env: TOKEN sets both value and valueFrom"]),
    ("blank pull secret name", _set("worker.imagePullSecrets", [{"name": " "}]),
     ["worker.imagePullSecrets[].name must be a Secret name"]),
    ("toleration without a key or exists", _set("worker.tolerations", [{"effect": "NoSchedule"}]),
     ["a toleration without a key must set operator: Exists"]),
    ("toleration exists with a value",
     _set("worker.tolerations", [{"key": "gpu", "operator": "Exists", "value": "yes"}]),
     ["operator Exists matches any value, so value must be empty"]),
    ("toleration seconds without noexecute",
     _set("worker.tolerations", [{"key": "gpu", "tolerationSeconds": 30}]),
     ["tolerationSeconds applies only to effect: NoExecute"]),
    ("toleration key not a label key", _set("worker.tolerations", [{"key": "a b", "value": "x"}]),
     ["worker.tolerations: key a b is not a label key"]),
    ("toleration value not a label value",
     _set("worker.tolerations", [{"key": "gpu", "value": "a b"}]),
     ["worker.tolerations: value a b is not a label value"]),
    ("node selector key not a label key", _set("worker.nodeSelector", {"gpu type": "h100"}),
     ["spec.worker.nodeSelector", "worker.nodeSelector: every key must be a label key"]),
    ("node selector value not a label value", _set("worker.nodeSelector", {"gpu": "h100!"}),
     ["worker.nodeSelector: h100! is not a label value"]),
    ("model volume over the worker's own mount",
     _set("model", {"path": "/tmp", "volume": {"emptyDir": {}}}),
     ["model.path /tmp is where the worker already mounts its own volume"]),
    ("env overriding POD_IP", _set("worker.env", [{"name": "POD_IP", "value": "0.0.0.0"}]),
     ["POD_IP is set by the operator"]),
    ("prometheus url without a scheme", _set("prometheus", {"url": "prometheus:9090"}),
     ["prometheus.url must be an http:// or https:// URL"]),
    ("metrics policy other than hold", _set("scaling.onMetricsUnavailable", "ScaleToZero"),
     ["spec.scaling.onMetricsUnavailable", 'Unsupported value: "ScaleToZero"']),
    ("profile configmap not a name", _set("scaling.profileConfigMap", "Bad_Name"),
     ["scaling.profileConfigMap must be a ConfigMap name"]),
    ("control interval too short", _set("scaling.intervalSeconds", 1),
     ["spec.scaling.intervalSeconds", "greater than or equal to 5"]),
    ("queue of length zero", _set("endpoints.0.queue", {"maxLength": 0}),
     ["spec.endpoints[0].queue.maxLength", "greater than or equal to 1"]),
    ("replicas min of zero", _set("replicas", {"min": 0, "max": 2}),
     ["spec.replicas.min", "greater than or equal to 1"]),
    ("memory in gigabytes written as GB", _set("worker.resources", {"limits": {"memory": "24GB"}}),
     ["spec.worker.resources.limits[memory]",
      "24GB is not a Kubernetes quantity: write a number with an optional suffix",
      "24Gi (binary: Ki, Mi, Gi, Ti, Pi, Ei) or 24G (decimal: k, M, G, T, P, E)"]),
    ("gpu count as a word", _set("worker.resources", {"limits": {"nvidia.com/gpu": "one"}}),
     ["one is not a Kubernetes quantity"]),
    ("negative cpu", _set("worker.resources", {"requests": {"cpu": "-1"}}),
     ["spec.worker.resources.requests[cpu]", "must not be negative"]),
    ("half a gpu", _set("worker.resources", {"limits": {"nvidia.com/gpu": "500m"}}),
     ["spec.worker.resources.limits",
      "an extended resource such as nvidia.com/gpu is not divisible: give it a whole number"]),
    ("resource name without a domain", _set("worker.resources", {"limits": {"gpu": 1}}),
     ["worker.resources.limits: every resource must be cpu, memory, ephemeral-storage, "
      "hugepages-<size>, or an extended resource with its domain, such as nvidia.com/gpu"]),
    ("cpu request above its limit",
     _set("worker.resources", {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}),
     ["worker.resources: a request must not exceed the limit of the same resource"]),
    ("gpu request without a limit", _set("worker.resources", {"requests": {"nvidia.com/gpu": 1}}),
     ["worker.resources: an extended resource such as nvidia.com/gpu cannot be overcommitted, so "
      "a request for it needs a limit of the same value"]),
    ("gpu request below its limit",
     _set("worker.resources", {"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}}),
     ["a request for it needs a limit of the same value"]),
    ("negative memory limit", _set("worker.resources", {"limits": {"memory": "-1Gi"}}),
     ["spec.worker.resources.limits[memory]", "must not be negative"]),
    ("memory request written as GB", _set("worker.resources", {"requests": {"memory": "24GB"}}),
     ["spec.worker.resources.requests[memory]", "24GB is not a Kubernetes quantity"]),
    ("request for a resource without a domain", _set("worker.resources", {"requests": {"gpus": 1}}),
     ["worker.resources.requests: every resource must be cpu, memory"]),
    ("half a gpu requested",
     _set("worker.resources", {"requests": {"nvidia.com/gpu": "0.5"},
                               "limits": {"nvidia.com/gpu": 1}}),
     ["worker.resources.requests: an extended resource such as nvidia.com/gpu is not divisible"]),
    ("batch bound above the worker's default slots", _delete("worker.kvCacheSlots"),
     ["spec.worker.kvCacheSlots",
      "an endpoint's batching.maxBatchSize.max is more sequences than a worker holds, "
      "worker.kvCacheSlots (64 when not set): lower that endpoint's batching.maxBatchSize.max, "
      "or raise worker.kvCacheSlots"]),
    ("batch bound above the worker's slots", _set("worker.kvCacheSlots", 16),
     ["spec.worker.kvCacheSlots", "is more sequences than a worker holds"]),
    ("kv cache slots of zero", _set("worker.kvCacheSlots", 0),
     ["spec.worker.kvCacheSlots", "greater than or equal to 1"]),
    ("context shorter than a prompt can be", _set("worker.maxContextTokens", 8),
     ["spec.worker.maxContextTokens", "greater than or equal to 16"]),
    ("worker size passed as an extra argument", _set("worker.extraArgs", ["--max-context=4096"]),
     ["worker.extraArgs: --max-context=4096 is set by the operator from the spec",
      "worker.maxContextTokens for --max-context"]),
    ("listen address passed as an extra argument", _set("worker.extraArgs", ["--host", "1.2.3.4"]),
     ["worker.extraArgs: --host is set by the operator from the spec"]),
    ("gpu-hour price as a number", _set("cost", {"gpuHourPrice": 2.49}),
     ["spec.cost.gpuHourPrice", "must be of type string"]),
    ("gpu-hour price with a currency sign", _set("cost", {"gpuHourPrice": "$2.49"}),
     ["cost.gpuHourPrice must be a decimal number written as a string"]),
    # JSON has no quantity type: a bare fraction is a number, and the quantity schema takes
    # integers and strings (as core types do in CRDs). "0.5" and 500m are accepted.
    ("fraction of a cpu as a bare number", _set("worker.resources", {"limits": {"cpu": 0.5}}),
     ["spec.worker.resources.limits.cpu", "must be of type integer,string"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "fragments"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_pool_is_refused_with_a_message_naming_the_problem(
    custom, pools_namespace, change, fragments
):
    message = _refusal(custom, pools_namespace, _spec(change))
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("name", ["a" * 51, "1st-pool"], ids=["too long", "starts with a digit"])
def test_pool_name_that_cannot_name_its_objects_is_refused(custom, pools_namespace, name):
    message = _refusal(custom, pools_namespace, _spec(lambda spec: None, name=name))
    assert "metadata.name must be a DNS-1035 label of at most 50 characters" in message


VALID_QUANTITIES = [
    {"limits": {"cpu": "500m"}},
    {"limits": {"cpu": "0.5"}},
    {"limits": {"cpu": 2}},
    {"requests": {"memory": "20G"}, "limits": {"memory": "24Gi"}},
    {"requests": {"ephemeral-storage": "1e9"}},
    {"limits": {"nvidia.com/gpu": 1}},
    {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": 2}},
    {"limits": {"hugepages-2Mi": "1Gi", "memory": "2Gi"}},
]


@pytest.mark.parametrize("resources", VALID_QUANTITIES, ids=[str(r) for r in VALID_QUANTITIES])
def test_kubernetes_quantities_are_accepted(custom, pools_namespace, resources):
    body = _spec(_set("worker.resources", resources), name="quantities")
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, pools_namespace, PLURAL, body, field_validation="Strict", dry_run="All"
    )
    assert created["spec"]["worker"]["resources"] == resources


@pytest.mark.parametrize(
    ("name", "sla"),
    [
        ("queue-alone", {"queueWaitP95Milliseconds": 200}),
        ("queue-and-ttft", {"ttftP95Milliseconds": 300, "queueWaitP95Milliseconds": 100}),
    ],
)
def test_a_queue_budget_alone_or_beside_the_ttft_budget_is_accepted(
    custom, pools_namespace, name, sla
):
    # One pool name per case: both are created for real in the same namespace.
    created = _create(custom, pools_namespace, _spec(_set("endpoints.0.sla", sla), name=name))
    assert created["spec"]["endpoints"][0]["sla"] == sla


def test_valid_pool_is_accepted_with_defaults_filled_in(custom, pools_namespace):
    created = _create(custom, pools_namespace, _spec(lambda spec: None, name="defaults"))
    spec = created["spec"]
    assert spec["scaling"] == {
        "mode": "Auto",
        "intervalSeconds": 15,
        "scaleDownStabilizationSeconds": 300,
        "maxScaleUpStep": 4,
        "onMetricsUnavailable": "Hold",
        "profileConfigMap": "",
    }
    assert spec["worker"]["port"] == 8000
    assert spec["worker"]["maxContextTokens"] == 2048
    nightly = spec["endpoints"][1]
    assert nightly["priority"] == 0 and nightly["default"] is False
    assert nightly["batching"]["batchWindowMilliseconds"] == {"min": 0, "max": 5}
    assert nightly["queue"] == {"maxWaitMilliseconds": 2000, "maxLength": 256}


def _kubectl(cluster, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    return subprocess.run(
        [str(cluster.kubectl), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_kubectl_scale_on_an_auto_pool_is_refused_with_the_reason(cluster, custom, pools_namespace):
    _create(custom, pools_namespace, _spec(lambda spec: None, name="auto-scaled"))
    result = _kubectl(
        cluster, "scale", "-n", pools_namespace, "inferencepools.carpool.dev/auto-scaled",
        "--replicas=3",
    )  # fmt: skip
    assert result.returncode != 0
    assert "only used when scaling.mode is Manual" in result.stderr
    assert "kubectl scale works only on Manual pools" in result.stderr


def test_kubectl_scale_on_a_manual_pool_sets_manual_replicas(cluster, custom, pools_namespace):
    manual = _set("scaling", {"mode": "Manual", "manualReplicas": 1})
    _create(custom, pools_namespace, _spec(manual, name="manual-scaled"))
    result = _kubectl(
        cluster, "scale", "-n", pools_namespace, "cpool/manual-scaled", "--replicas=3"
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pool = custom.get_namespaced_custom_object(
        GROUP, VERSION, pools_namespace, PLURAL, "manual-scaled"
    )
    assert pool["spec"]["scaling"]["manualReplicas"] == 3


def test_kubectl_scale_past_max_is_refused(cluster, custom, pools_namespace):
    manual = _set("scaling", {"mode": "Manual", "manualReplicas": 1})
    _create(custom, pools_namespace, _spec(manual, name="manual-capped"))
    result = _kubectl(
        cluster, "scale", "-n", pools_namespace, "cpool/manual-capped", "--replicas=9"
    )
    assert result.returncode != 0
    assert "scaling.manualReplicas must not exceed replicas.max" in result.stderr


def test_kubectl_get_shows_the_columns_an_sre_wants(cluster, custom, pools_namespace):
    _create(custom, pools_namespace, _spec(lambda spec: None, name="columns"))
    result = _kubectl(cluster, "get", "inferencepools.carpool.dev", "-n", pools_namespace)
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header == ["NAME", "MODE", "READY", "DESIRED", "WORST-P95/SLA", "STATUS", "AGE"]


def test_status_is_a_subresource_that_spec_writers_cannot_set(custom, pools_namespace):
    body = _spec(lambda spec: None, name="status-guarded")
    body["status"] = {"readyReplicas": 99}
    created = _create(custom, pools_namespace, body)
    assert "readyReplicas" not in (created.get("status") or {})


# sim-pool.yaml is the simulator's input (`carpool sim`), not meant for a cluster: no worker.
EXAMPLES = sorted(
    path
    for path in (Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")
    if path.name != "sim-pool.yaml"
)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_pools_are_accepted(custom, pools_namespace, path):
    pools = [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "InferencePool"]
    for pool in pools:
        custom.create_namespaced_custom_object(
            GROUP, VERSION, pools_namespace, PLURAL, pool, field_validation="Strict", dry_run="All"
        )
