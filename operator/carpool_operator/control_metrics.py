"""The control loop's Prometheus metrics: what it saw, decided and applied, per pool.

Contract: ``record(namespace, pool, spec, observation, decision, scaled, retuned)`` updates,
in the operator's registry (``carpool_operator.metrics.REGISTRY``):

- ``carpool_pool_replicas{namespace,pool,state}`` — state desired | ready | pending |
  recommended (the dashboard's replica panel; GPU-seconds are its integral);
- ``carpool_endpoint_sla_ttft_p95_seconds{namespace,pool,endpoint}`` — the SLA line;
- ``carpool_endpoint_target_limit{namespace,pool,endpoint,limit}`` — the limits decided;
- ``carpool_pool_metrics_available{namespace,pool}`` — 1 when the policy had fresh data;
- ``carpool_pool_capacity_limited{namespace,pool}`` — 1 when pods wait for GPUs;
- ``carpool_control_decisions_total{namespace,pool,action,reason}`` — action scale_up |
  scale_down | retune | hold; reason from ``decision_reason`` (a fixed vocabulary, so the
  label cannot grow without bound);
- ``carpool_control_errors_total{namespace,pool}`` via ``count_error``.

The labels name the pool, not the operator pod: scrape the operator with ``honor_labels``.
"""

from __future__ import annotations

import prometheus_client

from carpool_operator.metrics import REGISTRY
from carpool_policy import Decision, Observation, PoolSpec

POOL = ["namespace", "pool"]

REPLICAS = prometheus_client.Gauge(
    "carpool_pool_replicas", "Worker pods of a pool by state.", [*POOL, "state"], registry=REGISTRY
)
SLA = prometheus_client.Gauge(
    "carpool_endpoint_sla_ttft_p95_seconds",
    "An endpoint's p95 time-to-first-token SLA.",
    [*POOL, "endpoint"],
    registry=REGISTRY,
)
TARGET_LIMIT = prometheus_client.Gauge(
    "carpool_endpoint_target_limit",
    "The batch limits the control loop decided.",
    [*POOL, "endpoint", "limit"],
    registry=REGISTRY,
)
METRICS_AVAILABLE = prometheus_client.Gauge(
    "carpool_pool_metrics_available",
    "1 when the last decision had fresh worker metrics.",
    POOL,
    registry=REGISTRY,
)
CAPACITY_LIMITED = prometheus_client.Gauge(
    "carpool_pool_capacity_limited",
    "1 when worker pods are Pending for lack of GPUs.",
    POOL,
    registry=REGISTRY,
)
DECISIONS = prometheus_client.Counter(
    "carpool_control_decisions_total",
    "Control-loop decisions by what they did and why.",
    [*POOL, "action", "reason"],
    registry=REGISTRY,
)
ERRORS = prometheus_client.Counter(
    "carpool_control_errors_total", "Control-loop steps that failed.", POOL, registry=REGISTRY
)


def record(
    namespace: str,
    pool: str,
    spec: PoolSpec,
    observation: Observation,
    decision: Decision,
    scaled: bool,
    retuned: bool,
) -> None:
    labels = {"namespace": namespace, "pool": pool}
    for state, value in (
        ("desired", decision.replicas),
        ("ready", observation.ready_replicas),
        ("pending", observation.pending_unschedulable_replicas),
        ("recommended", decision.recommended_replicas),
    ):
        REPLICAS.labels(**labels, state=state).set(value)
    for endpoint in spec.endpoints:
        if endpoint.has_sla:
            SLA.labels(**labels, endpoint=endpoint.name).set(endpoint.ttft_p95_seconds)
        limits = decision.limits.get(endpoint.name)
        if limits is not None:
            for name, value in limits.to_dict().items():
                TARGET_LIMIT.labels(**labels, endpoint=endpoint.name, limit=name).set(value)
    METRICS_AVAILABLE.labels(**labels).set(1 if observation.available else 0)
    CAPACITY_LIMITED.labels(**labels).set(1 if observation.pending_unschedulable_replicas else 0)
    action = decision_action(observation, decision, scaled, retuned)
    DECISIONS.labels(**labels, action=action, reason=decision_reason(spec, decision, action)).inc()


def decision_action(
    observation: Observation, decision: Decision, scaled: bool, retuned: bool
) -> str:
    if scaled:
        return "scale_up" if decision.replicas > observation.desired_replicas else "scale_down"
    return "retune" if retuned else "hold"


DECISION_REASONS = (
    "metrics_unavailable",  # Prometheus down, no samples or stale: hold
    "series_missing",  # an endpoint's arrival rate is absent: no scale-down
    "not_auto",  # Recommend or Manual mode: nothing applied
    "capacity_limited",  # pods Pending for GPUs, or at replicas.max
    "sla_missed",  # a measured p95 TTFT over its budget
    "sla_at_risk",  # a scale-up the model asks for while the SLA holds
    "load_fell",  # scale-down
    "load_changed",  # retune
    "steady",  # hold
)


def decision_reason(spec: PoolSpec, decision: Decision, action: str) -> str:
    """One of `DECISION_REASONS`: what stopped the policy first, else what drove the action."""
    metrics = decision.condition("MetricsAvailable")
    if metrics is not None and metrics.status == "False":
        return "series_missing" if metrics.reason == "SeriesMissing" else "metrics_unavailable"
    if spec.scaling.mode != "Auto":
        return "not_auto"
    capacity = decision.condition("CapacityLimited")
    if capacity is not None and capacity.status == "True":
        return "capacity_limited"
    sla = decision.condition("SLAMet")
    if sla is not None and sla.status == "False":
        return "sla_missed"
    drivers = {"scale_up": "sla_at_risk", "scale_down": "load_fell", "retune": "load_changed"}
    return drivers.get(action, "steady")


def count_error(namespace: str, pool: str) -> None:
    ERRORS.labels(namespace=namespace, pool=pool).inc()
