"""Parse an InferencePool `spec` dict into a `PoolSpec`, applying the CRD's defaults.

Contract: `pool_spec_from_crd(spec)` accepts what the API server stores for carpool.dev/v1alpha1
(camelCase keys, integers, defaults possibly already filled in) and returns a `PoolSpec`; on a
value the CRD schema would refuse it raises `SpecError` whose message names the field path, so
callers that get specs from elsewhere (tests, the simulator's YAML) fail with the same words.
The defaults here must match the CRD's `default:` values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from carpool_policy.types import EndpointSpec, IntRange, PoolSpec, ScalingSpec, SpecError

DEFAULT_REPLICAS = {"min": 1, "max": 8}
DEFAULT_MAX_BATCH_SIZE = {"min": 1, "max": 16}
DEFAULT_BATCH_WINDOW_MILLISECONDS = {"min": 0, "max": 5}
DEFAULT_QUEUE = {"maxWaitMilliseconds": 2000, "maxLength": 256}
DEFAULT_SCALING = {
    "mode": "Auto",
    "intervalSeconds": 15,
    "scaleDownStabilizationSeconds": 300,
    "maxScaleUpStep": 4,
    "onMetricsUnavailable": "Hold",
    "profileConfigMap": "",
}
SCALING_MODES = ("Auto", "Recommend", "Manual")
MAX_ENDPOINTS = 16


def pool_spec_from_crd(spec: Mapping[str, Any]) -> PoolSpec:
    if not isinstance(spec, Mapping):
        raise SpecError("spec: must be an object")
    replicas = _range(spec.get("replicas"), DEFAULT_REPLICAS, "spec.replicas", lowest=0)
    if replicas.max < 1:
        raise SpecError("spec.replicas.max: must be at least 1")
    endpoints_raw = spec.get("endpoints")
    if not isinstance(endpoints_raw, list) or not 1 <= len(endpoints_raw) <= MAX_ENDPOINTS:
        raise SpecError(f"spec.endpoints: must list 1 to {MAX_ENDPOINTS} endpoints")
    endpoints = tuple(_endpoint(raw, f"spec.endpoints[{i}]") for i, raw in enumerate(endpoints_raw))
    names = [e.name for e in endpoints]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecError(f"spec.endpoints: duplicate names {', '.join(duplicates)}")
    if sum(e.default for e in endpoints) > 1:
        raise SpecError("spec.endpoints: at most one endpoint may set default: true")
    return PoolSpec(
        min_replicas=replicas.min,
        max_replicas=replicas.max,
        endpoints=endpoints,
        scaling=_scaling(spec.get("scaling")),
    )


def _endpoint(raw: Any, path: str) -> EndpointSpec:
    if not isinstance(raw, Mapping):
        raise SpecError(f"{path}: must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{path}.name: required, a DNS label")
    priority = _int(raw.get("priority", 0), f"{path}.priority", lowest=0, highest=1000)
    sla = raw.get("sla") or {}
    ttft_ms = sla.get("ttftP95Milliseconds") if isinstance(sla, Mapping) else None
    ttft_seconds = None
    if ttft_ms is not None:
        ttft_seconds = _int(ttft_ms, f"{path}.sla.ttftP95Milliseconds", lowest=1) / 1000.0
    queue_ms = sla.get("queueWaitP95Milliseconds") if isinstance(sla, Mapping) else None
    queue_seconds = None
    if queue_ms is not None:
        queue_seconds = _int(queue_ms, f"{path}.sla.queueWaitP95Milliseconds", lowest=1) / 1000.0
    if ttft_seconds is not None and queue_seconds is not None and queue_seconds >= ttft_seconds:
        raise SpecError(
            f"{path}.sla.queueWaitP95Milliseconds: must be below sla.ttftP95Milliseconds "
            f"(the queue wait is part of the time to first token)"
        )
    batching = raw.get("batching") or {}
    queue = {**DEFAULT_QUEUE, **(raw.get("queue") or {})}
    return EndpointSpec(
        name=name,
        priority=priority,
        default=bool(raw.get("default", False)),
        ttft_p95_seconds=ttft_seconds,
        queue_wait_p95_seconds=queue_seconds,
        max_batch_size=_range(
            batching.get("maxBatchSize"),
            DEFAULT_MAX_BATCH_SIZE,
            f"{path}.batching.maxBatchSize",
            lowest=1,
        ),
        batch_window_milliseconds=_range(
            batching.get("batchWindowMilliseconds"),
            DEFAULT_BATCH_WINDOW_MILLISECONDS,
            f"{path}.batching.batchWindowMilliseconds",
            lowest=0,
        ),
        max_queue_wait_milliseconds=_int(
            queue["maxWaitMilliseconds"], f"{path}.queue.maxWaitMilliseconds", lowest=0
        ),
        max_queue_length=_int(queue["maxLength"], f"{path}.queue.maxLength", lowest=0),
    )


def _scaling(raw: Any) -> ScalingSpec:
    merged = {**DEFAULT_SCALING, **(raw or {})}
    if merged["mode"] not in SCALING_MODES:
        raise SpecError(f"spec.scaling.mode: must be one of {', '.join(SCALING_MODES)}")
    if merged["onMetricsUnavailable"] != "Hold":
        raise SpecError("spec.scaling.onMetricsUnavailable: only Hold is supported")
    return ScalingSpec(
        mode=merged["mode"],
        interval_seconds=_int(merged["intervalSeconds"], "spec.scaling.intervalSeconds", lowest=1),
        scale_down_stabilization_seconds=_int(
            merged["scaleDownStabilizationSeconds"],
            "spec.scaling.scaleDownStabilizationSeconds",
            lowest=0,
        ),
        max_scale_up_step=_int(merged["maxScaleUpStep"], "spec.scaling.maxScaleUpStep", lowest=1),
        on_metrics_unavailable=merged["onMetricsUnavailable"],
        profile_config_map=str(merged["profileConfigMap"] or ""),
    )


def _range(raw: Any, default: Mapping[str, int], path: str, lowest: int) -> IntRange:
    if raw is not None and not isinstance(raw, Mapping):
        raise SpecError(f"{path}: must be an object with min and max")
    merged = {**default, **(raw or {})}
    low = _int(merged["min"], f"{path}.min", lowest=lowest)
    high = _int(merged["max"], f"{path}.max", lowest=lowest)
    if raw is not None and "max" not in raw and low > high:
        high = low  # only min given, above the default max: the range is that one value
    if low > high:
        raise SpecError(f"{path}: min ({low}) must not exceed max ({high})")
    return IntRange(low, high)


def _int(value: Any, path: str, lowest: int | None = None, highest: int | None = None) -> int:
    # bool is an int subclass; the CRD schema refuses it, so refuse it here too.
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}: must be an integer, got {value!r}")
    if lowest is not None and value < lowest:
        raise SpecError(f"{path}: must be at least {lowest}, got {value}")
    if highest is not None and value > highest:
        raise SpecError(f"{path}: must be at most {highest}, got {value}")
    return value
