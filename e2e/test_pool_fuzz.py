"""InferencePools against the real API server and the operator: generated ones (hypothesis), and
the cases they led to.

The generator draws valid pools (quantities in every legal spelling, each scaling mode, one to
three endpoints with SLAs, tolerations, env, volumes) and spoils about half of them with one or
two of the mistakes a user makes (`MISTAKES`). Each example is sent as `kubectl apply
--server-side` sends it (server-side apply, strict field validation). A pool with a mistake must
be refused, in words that name it and show no Go internals, and nothing stored. A valid pool must
be accepted whole, and the operator (its own process, under the chart's RBAC) must reconcile it:
Reconciled=True for that generation, and counts and conditions that agree with the spec.

Bounded: a fixed number of examples, derandomized (the same ones on every run), about a minute
on two cores. The counts (generated, accepted, refused, the mistakes tried) are printed for CI's
log. Worker pods never run: every pool asks for a node label no node has.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client

from carpool_cluster.testing import wait_for
from carpool_operator import drift
from carpool_operator.kube import Kube

from .operator_support import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    delete_pools,
)

NAMESPACE_PREFIX = "fuzz"
EXAMPLES = 100
# No node carries this label, so the worker pods stay Pending: the operator's work is what is
# under test, and two shared cores cannot run dozens of workers.
NOWHERE = {"carpool.dev/fuzz-no-such-node": "true"}
GO_INTERNALS = re.compile(r"&value\.|valueUnstructured|\bmap\[string\]interface|0x[0-9a-f]{6,}")


@pytest.fixture(scope="module")
def operator(api, ns, operator_kubeconfig, tmp_path_factory) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("fuzz") / "operator.log"
    process = OperatorProcess(operator_kubeconfig, log, namespaces=[ns])
    process.start()
    try:
        yield process
    finally:
        delete_pools(api, ns)  # while the operator runs, so their finalizers are released
        process.stop()


# --- the generator: valid pools, and the mistakes a user makes in them ------------------------

IMAGES = ["ghcr.io/example/carpool-worker:0.1.0", "registry.local:5000/carpool/worker:1"]
# Requests are drawn from values below every limit, so each pair is in order.
LIMITS = {"cpu": ["2", 4, "4000m"], "memory": ["24Gi", "24G", "32Gi"]}
REQUESTS = {"cpu": ["500m", "0.5", 1], "memory": ["512M", "1Gi", "1e9"]}


def _resources() -> st.SearchStrategy:
    def build(limits: dict, requests: dict, gpu_request: bool) -> dict:
        if gpu_request and "nvidia.com/gpu" in limits:  # an extended resource: equal, or absent
            requests["nvidia.com/gpu"] = str(limits["nvidia.com/gpu"])
        return {key: value for key, value in (("limits", limits), ("requests", requests)) if value}

    def quantities(values: dict, **extra: st.SearchStrategy) -> st.SearchStrategy:
        named = {name: st.sampled_from(choices) for name, choices in values.items()}
        return st.fixed_dictionaries({}, optional={**named, **extra})

    return st.builds(
        build,
        quantities(LIMITS, **{"nvidia.com/gpu": st.integers(1, 2)}),
        quantities(REQUESTS),
        st.booleans(),
    )


def _worker() -> st.SearchStrategy:
    return st.fixed_dictionaries(
        {"image": st.sampled_from(IMAGES)},
        optional={
            "port": st.sampled_from([8000, 9000, 65535]),
            "imagePullPolicy": st.sampled_from(["Always", "IfNotPresent", "Never"]),
            "resources": _resources(),
            "env": st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["OMP_NUM_THREADS", "LOG_LEVEL", "my.var"])},
                    optional={"value": st.sampled_from(["1", "debug", ""])},
                ),
                max_size=2,
                unique_by=lambda e: e["name"],
            ),
            "tolerations": st.lists(
                st.sampled_from([
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "dedicated", "value": "inference"},
                    {"operator": "Exists"},
                    {"key": "gpu", "effect": "NoExecute", "tolerationSeconds": 30},
                ]),
                max_size=2,
            ),
            "imagePullSecrets": st.just([{"name": "regcred"}]),
            "extraArgs": st.sampled_from([["--device", "cpu"], []]),
        },
    )  # fmt: skip


def _endpoints() -> st.SearchStrategy:
    def endpoint(name: str, priority: int, sla: int | None, window: int | None, batch: tuple):
        out: dict[str, Any] = {"name": name, "priority": priority}
        if sla is not None:
            out["sla"] = {"ttftP95Milliseconds": sla}
        batching: dict[str, Any] = {}
        if window is not None:  # below the SLA, as the schema requires
            batching["batchWindowMilliseconds"] = {"min": 0, "max": window}
        if batch:
            batching["maxBatchSize"] = {"min": min(batch), "max": max(batch)}
        if batching:
            out["batching"] = batching
        return out

    one = st.builds(
        endpoint,
        st.sampled_from(["chat", "inline-completion", "batch", "e1"]),
        st.integers(0, 1000),
        st.one_of(st.none(), st.sampled_from([6, 300, 2000])),
        st.one_of(st.none(), st.sampled_from([0, 1, 5])),
        st.one_of(st.just(()), st.tuples(st.integers(1, 64), st.integers(1, 64))),
    )
    return st.lists(one, min_size=1, max_size=3, unique_by=lambda e: e["name"])


def _replicas_and_scaling() -> st.SearchStrategy:
    def build(low: int, high: int | None, mode: str, manual: int) -> dict:
        top = 8 if high is None else max(low, high)
        out: dict[str, Any] = {"replicas": {"min": low} if high is None else
                               {"min": low, "max": top}}  # fmt: skip
        out["scaling"] = {"mode": mode}
        if mode == "Manual":
            out["scaling"]["manualReplicas"] = min(manual, top)
        return out

    return st.builds(
        build,
        st.integers(1, 4),
        st.one_of(st.none(), st.integers(1, 6)),
        st.sampled_from(["Auto", "Recommend", "Manual"]),
        st.integers(0, 3),
    )


def valid_pools() -> st.SearchStrategy:
    def build(model: dict, worker: dict, endpoints: list, counts: dict, url: bool) -> dict:
        spec = {"model": model, "worker": worker, "endpoints": endpoints, **counts}
        if url:  # a closed loopback port: the control loop finds no Prometheus at once
            spec["prometheus"] = {"url": "http://127.0.0.1:1"}
        return spec

    model = st.one_of(
        st.fixed_dictionaries({"preset": st.sampled_from(["tiny", "bench-1b", "bench-8b"])}),
        st.fixed_dictionaries(
            {"path": st.just("/models/llama")}, optional={"volume": st.just({"emptyDir": {}})}
        ),
    )
    return st.builds(build, model, _worker(), _endpoints(), _replicas_and_scaling(), st.booleans())


def _resources_of(spec: dict, which: str) -> dict:
    return spec["worker"].setdefault("resources", {}).setdefault(which, {})


def _first_endpoint(spec: dict) -> dict:
    if not spec["endpoints"]:
        spec["endpoints"].append({"name": "chat"})
    return spec["endpoints"][0]


def _no_gpu_request(spec: dict) -> None:
    _resources_of(spec, "limits").pop("nvidia.com/gpu", None)
    _resources_of(spec, "requests")["nvidia.com/gpu"] = 1


def _manual_above_max(spec: dict) -> None:
    spec["replicas"] = {"min": 1, "max": 2}
    spec["scaling"] = {"mode": "Manual", "manualReplicas": 3}


def _duplicate_endpoint(spec: dict) -> None:
    spec["endpoints"].append(dict(_first_endpoint(spec)))


# (kind, mistake, a fragment the refusal must carry). Each makes any valid pool invalid, and none
# undoes another, so a pool with any of them must be refused.
MISTAKES: list[tuple[str, Any, str]] = [
    ("memory in GB", lambda s: _resources_of(s, "limits").update(memory="24GB"),
     "24GB is not a Kubernetes quantity"),
    ("GPU count as a word", lambda s: _resources_of(s, "limits").update({"nvidia.com/gpu": "one"}),
     "one is not a Kubernetes quantity"),
    ("negative CPU request", lambda s: _resources_of(s, "requests").update(cpu="-1"),
     "must not be negative"),
    ("half a GPU", lambda s: _resources_of(s, "limits").update({"nvidia.com/gpu": "500m"}),
     "is not divisible: give it a whole number"),
    ("resource without a domain", lambda s: _resources_of(s, "limits").update(gpu=1),
     "every resource must be cpu, memory"),
    ("CPU request above its limit",
     lambda s: (_resources_of(s, "limits").update(cpu="1"),
                _resources_of(s, "requests").update(cpu="64")),
     "a request must not exceed the limit of the same resource"),
    ("GPU request without a limit", _no_gpu_request, "cannot be overcommitted"),
    ("CPU as a bare fraction", lambda s: _resources_of(s, "limits").update(cpu=0.5),
     "must be of type integer,string"),
    ("blank image", lambda s: s["worker"].update(image=" "),
     "worker.image must be an image reference without spaces"),
    ("blank env name", lambda s: s["worker"].setdefault("env", []).append({"name": " "}),
     "is not a variable name"),
    ("toleration Exists with a value",
     lambda s: s["worker"].setdefault("tolerations", []).append(
         {"key": "gpu", "operator": "Exists", "value": "yes"}),
     "operator Exists matches any value, so value must be empty"),
    ("node selector key with a space", lambda s: s["worker"].update(nodeSelector={"gpu type": "a"}),
     "every key must be a label key"),
    ("replicas.min above the default max", lambda s: s.update(replicas={"min": 10}),
     "replicas.min must not exceed replicas.max (which is 8 when not set)"),
    ("SLA inside the default batch window",
     lambda s: (_first_endpoint(s).update(sla={"ttftP95Milliseconds": 5}),
                _first_endpoint(s).pop("batching", None)),
     "(5 ms when not set) must be shorter than the SLA it serves"),
    ("batch size bounds crossed",
     lambda s: _first_endpoint(s).update(batching={"maxBatchSize": {"min": 64, "max": 8}}),
     "batching.maxBatchSize.min must not exceed batching.maxBatchSize.max"),
    ("manualReplicas above max", _manual_above_max,
     "scaling.manualReplicas must not exceed replicas.max"),
    ("manualReplicas outside Manual mode",
     lambda s: s.update(scaling={"mode": "Auto", "manualReplicas": 1}),
     "only used when scaling.mode is Manual"),
    ("unknown scaling mode", lambda s: s.update(scaling={"mode": "Turbo"}),
     'Unsupported value: "Turbo"'),
    ("endpoint name not a DNS label", lambda s: _first_endpoint(s).update(name="Bad_Name"),
     "must be a DNS label"),
    ("duplicate endpoint names", _duplicate_endpoint, "duplicate entries for key [name="),
    ("model volume over the worker's /tmp",
     lambda s: s.update(model={"path": "/tmp", "volume": {"emptyDir": {}}}),
     "already mounts its own volume"),
    ("relative model path", lambda s: s.update(model={"path": "models/llama"}),
     "model.path must be an absolute path"),
    ("no endpoints", lambda s: s.update(endpoints=[]), "should have at least 1 items"),
    ("Prometheus URL without a scheme", lambda s: s.update(prometheus={"url": "prom:9090"}),
     "prometheus.url must be an http:// or https:// URL"),
    ("unknown field", lambda s: s["worker"].update(imagee="typo"),
     "spec.worker.imagee"),
]  # fmt: skip
# Server-side apply's merge step answers these before validation (HTTP 500 in Kubernetes 1.37;
# a change upstream makes it 400): see docs/api.md.
MERGE_STEP = {"duplicate endpoint names", "unknown field"}


def pools() -> st.SearchStrategy:
    """(spec, the mistakes in it): about half the pools are valid (each costs a reconcile), the
    others carry one or two mistakes (each costs one request)."""

    def mistakes(count: int) -> st.SearchStrategy:
        indexes = st.integers(0, len(MISTAKES) - 1)
        return st.lists(indexes, min_size=count, max_size=count, unique=True)

    def spoil(spec: dict, chosen: list[int]) -> tuple[dict, list[int]]:
        spec = json.loads(json.dumps(spec))
        for index in chosen:
            MISTAKES[index][1](spec)
        return spec, chosen

    return st.builds(spoil, valid_pools(), st.sampled_from([0, 1, 1, 2]).flatmap(mistakes))


# --- one example --------------------------------------------------------------------------------


def _apply(custom: client.CustomObjectsApi, ns: str, name: str, spec: dict) -> dict:
    spec = json.loads(json.dumps(spec))
    worker = spec["worker"]
    worker["nodeSelector"] = {**(worker.get("nodeSelector") or {}), **NOWHERE}
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferencePool",
            "metadata": {"name": name}, "spec": spec}  # fmt: skip
    response = custom.patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name, body, field_manager="fuzz", force=True,
        field_validation="Strict", _content_type="application/apply-patch+yaml",
        _preload_content=False,
    )  # fmt: skip
    return json.loads(response.data)


def _condition(pool: dict, type_: str) -> dict:
    return next(c for c in pool["status"]["conditions"] if c["type"] == type_)


def _visited(kube: Kube, ns: str, name: str, generation: int) -> dict:
    """The pool once the operator has reconciled this generation, successfully or not."""

    def probe():
        pool = kube.get("InferencePool", ns, name) or {}
        for condition in (pool.get("status") or {}).get("conditions") or []:
            if condition["type"] == "Reconciled" and condition["observedGeneration"] == generation:
                return pool
        return None

    return wait_for(f"the operator to visit pool {name} at generation {generation}", probe, 30, 0.1)


def _check_agrees_with_spec(kube: Kube, ns: str, pool: dict) -> None:
    """The operator's conditions and counts say what the spec says, never something else."""
    spec, status, name = pool["spec"], pool["status"], pool["metadata"]["name"]
    scaling = spec["scaling"]
    manual = scaling["mode"] == "Manual"
    wanted = scaling["manualReplicas"] if manual else spec["replicas"]["min"]
    deployment = kube.get("Deployment", ns, f"{name}-worker")
    assert deployment["spec"]["replicas"] == wanted == status["desiredReplicas"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == spec["worker"]["image"]

    ready = _condition(pool, "Ready")
    assert ready["status"] == "False", ready  # no node matches: no worker can be ready
    if wanted == 0:
        assert ready["reason"] == "ScaledToZero", ready
        assert ready["message"] == "scaling.manualReplicas is 0: no worker runs", ready
    else:
        assert ready["reason"] == "NoReadyWorkers", ready
        assert ready["message"] == f"0 of {wanted} workers are ready", ready
    assert _condition(pool, "ScalerConflict")["status"] == "False"

    in_force = {e["name"]: e for e in status["endpoints"]}
    assert list(in_force) == [e["name"] for e in spec["endpoints"]]
    for endpoint in spec["endpoints"]:
        for limit in ("maxBatchSize", "batchWindowMilliseconds"):
            bounds = endpoint["batching"][limit]
            assert bounds["min"] <= in_force[endpoint["name"]][limit] <= bounds["max"], limit


class Tally:
    def __init__(self) -> None:
        self.generated = self.accepted = self.refused = 0
        self.mistakes: Counter[str] = Counter()

    def line(self) -> str:
        kinds = "; ".join(f"{kind}: {n}" for kind, n in sorted(self.mistakes.items()))
        return (
            f"generated InferencePools: {self.generated} generated, {self.accepted} accepted and "
            f"reconciled, {self.refused} refused at admission. Mistakes tried: {kinds}"
        )


def _check_refusal(error: client.ApiException, kinds: list[str]) -> None:
    """Refused as the API server refuses a bad request, saying what is wrong, in plain words."""
    message = json.loads(error.body)["message"]
    if error.status == 500:  # server-side apply's merge step, before validation (upstream)
        assert set(kinds) & MERGE_STEP, message
        assert message.startswith("failed to create typed patch object"), message
    else:
        assert error.status in (400, 422), error.body
    assert not GO_INTERNALS.search(message), message
    expected = [fragment for kind, _, fragment in MISTAKES if kind in kinds]
    assert any(fragment in message for fragment in expected), (kinds, message)


def test_generated_pools_are_refused_clearly_or_reconciled_faithfully(api, ns, operator, capsys):
    custom = client.CustomObjectsApi(api)
    kube = Kube(api)
    tally = Tally()

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(example=pools())
    def check(example: tuple[dict[str, Any], list[int]]) -> None:
        spec, chosen = example
        kinds = [MISTAKES[index][0] for index in chosen]
        tally.generated += 1
        name = f"fuzz-{tally.generated}"
        try:
            applied = _apply(custom, ns, name, spec)
        except client.ApiException as error:
            assert kinds, f"a valid pool was refused: {error.body}\n{spec}"
            _check_refusal(error, kinds)
            assert kube.get("InferencePool", ns, name) is None, "a refused pool was stored"
            tally.refused += 1
            tally.mistakes.update(kinds)
            return
        assert not kinds, f"accepted with {kinds}: {spec}"
        # Nothing the user sent was dropped on the way in.
        assert drift.contains(applied["spec"], spec), (spec, applied["spec"])
        generation = applied["metadata"]["generation"]
        pool = _visited(kube, ns, name, generation)
        reconciled = _condition(pool, "Reconciled")
        assert reconciled["status"] == "True", (spec, reconciled)  # accepted, so it applies
        assert pool["status"]["observedGeneration"] == generation
        _check_agrees_with_spec(kube, ns, pool)
        tally.accepted += 1
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)

    log_before = len(operator.log(last_lines=1_000_000))
    try:
        check()
    finally:
        with capsys.disabled():
            print(f"\n{tally.line()}")
    log = operator.log(last_lines=1_000_000)[log_before:]
    assert "Traceback" not in log and "failed with an exception" not in log, log[-4000:]
    assert tally.accepted >= EXAMPLES // 5 and tally.refused >= EXAMPLES // 5, tally.line()


def test_deployment_the_api_server_refuses_is_the_ready_reason(api, ns, operator):
    """The schema cannot check a volume source (a free-form Kubernetes object); the Deployment's
    own validation does, and its answer must be what Ready says, not a count of workers."""
    kube = Kube(api)
    spec = {
        "model": {"path": "/models/llama", "volume": {"hostPath": {}}},
        "worker": {"image": "ghcr.io/example/carpool-worker:0.1.0", "nodeSelector": NOWHERE},
        "endpoints": [{"name": "chat"}],
    }
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferencePool",
            "metadata": {"name": "refused-volume"}, "spec": spec}  # fmt: skip
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    pool = _visited(kube, ns, "refused-volume", 1)
    assert _condition(pool, "Reconciled")["status"] == "False"
    ready = _condition(pool, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ApplyFailed"), ready
    assert 'Deployment.apps "refused-volume-worker" is invalid' in ready["message"], ready
    assert "hostPath.path: Required value" in ready["message"], ready


def test_new_deployment_starts_at_its_count_and_only_the_scaler_owns_it(api, ns, operator):
    """Created at the API's default of 1, the control loop would publish 1 as the desired count
    of a pool whose replicas.min is 3 (the generated pools found this)."""
    kube = Kube(api)
    spec = {
        "model": {"preset": "tiny"},
        "worker": {"image": "ghcr.io/example/carpool-worker:0.1.0", "nodeSelector": NOWHERE},
        "replicas": {"min": 3, "max": 4},
        "endpoints": [{"name": "chat"}],
    }
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "InferencePool",
            "metadata": {"name": "starts-at-three"}, "spec": spec}  # fmt: skip
    client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    _visited(kube, ns, "starts-at-three", 1)
    deployment = kube.get("Deployment", ns, "starts-at-three-worker")
    # Each spec change bumps the generation: at 1, the Deployment was created with 3 workers.
    assert (deployment["metadata"]["generation"], deployment["spec"]["replicas"]) == (1, 3)
    owners = {
        entry["manager"]
        for entry in deployment["metadata"]["managedFields"]
        if "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {})
    }
    assert owners == {"carpool-scaler"}
