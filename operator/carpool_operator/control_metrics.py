"""The control loop's Prometheus metrics: what it saw, decided and applied, per pool.

Contract: ``record(namespace, pool, spec, observation, decision, scaled, retuned, shown=...,
gpus=..., gpu_hour_price=..., costs=...)`` updates, in the operator's registry
(``carpool_operator.metrics.REGISTRY``):

- ``carpool_pool_replicas{namespace,pool,state}`` — state desired | ready | pending |
  recommended (the dashboard's replica panel; GPU-seconds are its integral);
- ``carpool_endpoint_sla_ttft_p95_seconds{namespace,pool,endpoint}`` and
  ``carpool_endpoint_sla_queue_wait_p95_seconds{namespace,pool,endpoint}`` — the SLA lines
  (``sla.ttftP95Milliseconds``, ``sla.queueWaitP95Milliseconds``), absent where not set;
- ``carpool_endpoint_queue_budget_seconds{namespace,pool,endpoint}`` — the queue budget the
  policy judged the measured queue-wait p95 against (``Decision.queue_budget_seconds``): set
  once known, kept while a decision cannot tell it (metrics unavailable);
- ``carpool_endpoint_target_limit{namespace,pool,endpoint,limit}`` — the limits decided;
- ``carpool_pool_metrics_available{namespace,pool}`` — the MetricsAvailable condition the pool
  shows (``shown``): 1 when True, 0 when False (no samples, stale, missing labels, Prometheus
  unreachable, a series missing). The condition and the gauge are one fact;
- ``carpool_pool_metrics_unavailable_reason{namespace,pool,reason}`` — 1 for the condition's
  reason while it is False (absent otherwise), for the alert to name it;
- ``carpool_pool_profile_loaded{namespace,pool}`` — the ProfileLoaded condition (absent when the
  pool names no profile ConfigMap);
- ``carpool_pool_gpus{namespace,pool}``, ``carpool_pool_gpu_hour_price{namespace,pool}`` and
  ``carpool_endpoint_cost_per_million_tokens{namespace,pool,endpoint}`` — the fuel ledger
  (``carpool_operator.ledger``); the price and costs are absent when unknown;
- ``carpool_pool_capacity_limited{namespace,pool}`` — 1 when pods wait for GPUs;
- ``carpool_pool_sla_reachable{namespace,pool}`` — the SLAReachable condition: 0 while an
  endpoint's measured service time alone exceeds its TTFT budget, 1 otherwise (absent until
  known);
- ``carpool_control_decisions_total{namespace,pool,action,reason}`` — action scale_up |
  scale_down | retune | hold; reason from ``decision_reason``: the first rule the decision
  names (``Decision.rules``), else what drove the action; a fixed vocabulary
  (``DECISION_REASONS``), so the label cannot grow without bound;
- ``carpool_control_errors_total{namespace,pool}`` via ``count_error``.

``forget(namespace, pool)`` drops all of a pool's series when its control loop ends here.

The labels name the pool, not the operator pod: scrape the operator with ``honor_labels``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import prometheus_client

from carpool_operator.conditions import Condition
from carpool_operator.metrics import REGISTRY
from carpool_policy import Decision, Observation, PoolSpec
from carpool_policy.explain import RULES

POOL = ["namespace", "pool"]


# Every series labelled by pool, for `forget` to drop a pool's.
_PER_POOL: list[prometheus_client.Gauge | prometheus_client.Counter] = []


def _gauge(name: str, documentation: str, *labels: str) -> prometheus_client.Gauge:
    """A gauge in the operator's registry, labelled by pool and then `labels`."""
    gauge = prometheus_client.Gauge(name, documentation, [*POOL, *labels], registry=REGISTRY)
    _PER_POOL.append(gauge)
    return gauge


REPLICAS = _gauge("carpool_pool_replicas", "Worker pods of a pool by state.", "state")
SLA = _gauge(
    "carpool_endpoint_sla_ttft_p95_seconds",
    "An endpoint's p95 time-to-first-token SLA.",
    "endpoint",
)
QUEUE_SLA = _gauge(
    "carpool_endpoint_sla_queue_wait_p95_seconds",
    "An endpoint's p95 queue-wait SLA (sla.queueWaitP95Milliseconds).",
    "endpoint",
)
QUEUE_BUDGET = _gauge(
    "carpool_endpoint_queue_budget_seconds",
    "The p95 queue wait an endpoint may spend: the budget the control loop scales on.",
    "endpoint",
)
TARGET_LIMIT = _gauge(
    "carpool_endpoint_target_limit",
    "The batch limits the control loop decided.",
    "endpoint",
    "limit",
)
METRICS_AVAILABLE = _gauge(
    "carpool_pool_metrics_available",
    "1 while the pool's MetricsAvailable condition is True (fresh worker metrics).",
)
METRICS_UNAVAILABLE_REASON = _gauge(
    "carpool_pool_metrics_unavailable_reason",
    "1 for the reason of a MetricsAvailable=False condition.",
    "reason",
)
PROFILE_LOADED = _gauge(
    "carpool_pool_profile_loaded",
    "1 while the pool's profile ConfigMap holds a valid profile, 0 while it does not.",
)
GPUS = _gauge("carpool_pool_gpus", "GPUs held by the pool's worker pods.")
GPU_HOUR_PRICE = _gauge(
    "carpool_pool_gpu_hour_price",
    "The price of one GPU for an hour (spec.cost.gpuHourPrice or --gpu-hour-price).",
)
COST = _gauge(
    "carpool_endpoint_cost_per_million_tokens",
    "What a million of the endpoint's tokens (prompt + generated) cost in GPU time.",
    "endpoint",
)
CAPACITY_LIMITED = _gauge(
    "carpool_pool_capacity_limited", "1 when worker pods are Pending for lack of GPUs."
)
SLA_REACHABLE = _gauge(
    "carpool_pool_sla_reachable",
    "0 while an endpoint's measured service time alone exceeds its TTFT budget (SLAReachable).",
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
_PER_POOL += [DECISIONS, ERRORS]


def forget(namespace: str, pool: str) -> None:
    """Drop every series of one pool. Its control loop has ended here: the pool was deleted, or
    another operator replica controls it now. A series left behind would keep its last value
    (a capacity-limited or metrics-unavailable pool would keep its alert firing)."""
    for metric in _PER_POOL:
        metric.remove_by_labels({"namespace": namespace, "pool": pool})


def record(
    namespace: str,
    pool: str,
    spec: PoolSpec,
    observation: Observation,
    decision: Decision,
    scaled: bool,
    retuned: bool,
    *,
    shown: Sequence[Condition],
    gpus: int = 0,
    gpu_hour_price: float | None = None,
    costs: Mapping[str, float] | None = None,
) -> None:
    labels = {"namespace": namespace, "pool": pool}
    for state, value in (
        ("desired", decision.replicas),
        ("ready", observation.ready_replicas),
        ("pending", observation.pending_unschedulable_replicas),
        ("recommended", decision.recommended_replicas),
    ):
        REPLICAS.labels(**labels, state=state).set(value)
    # What the policy's model and guard need before damping: where desired stays above it, the
    # scale-down's tighter headroom, its stabilization window or a step bound holds the rest.
    # Unknown on a hold for missing metrics, and then not shown: a stale need would read as
    # today's.
    if decision.needed_replicas is None:
        _remove(REPLICAS, namespace, pool, "needed")
    else:
        REPLICAS.labels(**labels, state="needed").set(decision.needed_replicas)
    for endpoint in spec.endpoints:
        # An SLA taken out of the spec takes its line out too: the burn-rate alerts read it.
        for gauge, line in (
            (SLA, endpoint.ttft_p95_seconds),
            (QUEUE_SLA, endpoint.queue_wait_p95_seconds),
        ):
            if line is None:
                _remove(gauge, labels["namespace"], labels["pool"], endpoint.name)
            else:
                gauge.labels(**labels, endpoint=endpoint.name).set(line)
        queue_budget = decision.queue_budget_seconds.get(endpoint.name)
        if queue_budget is not None:
            QUEUE_BUDGET.labels(**labels, endpoint=endpoint.name).set(queue_budget)
        limits = decision.limits.get(endpoint.name)
        if limits is not None:
            for name, value in limits.to_dict().items():
                TARGET_LIMIT.labels(**labels, endpoint=endpoint.name, limit=name).set(value)
    _record_conditions(labels, shown)
    _record_ledger(labels, spec, gpus, gpu_hour_price, costs or {})
    CAPACITY_LIMITED.labels(**labels).set(1 if observation.pending_unschedulable_replicas else 0)
    reachable = _condition(shown, "SLAReachable")
    if reachable is None or reachable.status == "Unknown":
        _remove(SLA_REACHABLE, labels["namespace"], labels["pool"])
    else:
        SLA_REACHABLE.labels(**labels).set(1 if reachable.status == "True" else 0)
    action = decision_action(observation, decision, scaled, retuned)
    DECISIONS.labels(**labels, action=action, reason=decision_reason(spec, decision, action)).inc()


# The reason each pool's metrics_unavailable_reason series has now, to remove it when it moves.
_unavailable_reasons: dict[tuple[str, str], str] = {}


def _condition(shown: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in shown if c.type == type_), None)


def _record_conditions(labels: dict[str, str], shown: Sequence[Condition]) -> None:
    metrics = _condition(shown, "MetricsAvailable")
    available = metrics is not None and metrics.status == "True"
    METRICS_AVAILABLE.labels(**labels).set(1 if available else 0)
    reason = None if available or metrics is None else metrics.reason
    key = (labels["namespace"], labels["pool"])
    old = _unavailable_reasons.pop(key, None)
    if old is not None and old != reason:
        _remove(METRICS_UNAVAILABLE_REASON, *key, old)
    if reason is not None:
        _unavailable_reasons[key] = reason
        METRICS_UNAVAILABLE_REASON.labels(**labels, reason=reason).set(1)
    profile = _condition(shown, "ProfileLoaded")
    if profile is None:
        _remove(PROFILE_LOADED, labels["namespace"], labels["pool"])
    else:
        PROFILE_LOADED.labels(**labels).set(1 if profile.status == "True" else 0)


def _record_ledger(
    labels: dict[str, str],
    spec: PoolSpec,
    gpus: int,
    price: float | None,
    costs: Mapping[str, float],
) -> None:
    GPUS.labels(**labels).set(gpus)
    if price is None:
        _remove(GPU_HOUR_PRICE, labels["namespace"], labels["pool"])
    else:
        GPU_HOUR_PRICE.labels(**labels).set(price)
    for endpoint in spec.endpoints:
        if endpoint.name in costs:
            COST.labels(**labels, endpoint=endpoint.name).set(costs[endpoint.name])
        else:
            _remove(COST, labels["namespace"], labels["pool"], endpoint.name)


def _remove(gauge: prometheus_client.Gauge, *label_values: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*label_values)


def decision_action(
    observation: Observation, decision: Decision, scaled: bool, retuned: bool
) -> str:
    if scaled:
        return "scale_up" if decision.replicas > observation.desired_replicas else "scale_down"
    return "retune" if retuned else "hold"


# What drove a decision that no rule of the policy names (`decision_reason`'s fallbacks).
DRIVERS = (
    "sla_missed",  # a measured p95 TTFT over its budget
    "sla_at_risk",  # a scale-up the model asks for while the SLA holds
    "load_fell",  # scale-down
    "load_changed",  # retune
    "steady",  # hold
)
# The label's values: every rule of the policy (explained where they are defined), then the
# drivers.
DECISION_REASONS = RULES + DRIVERS


def decision_reason(spec: PoolSpec, decision: Decision, action: str) -> str:
    """One of `DECISION_REASONS`: what stopped the policy first, then the first rule the
    decision names, else what drove the action."""
    metrics = decision.condition("MetricsAvailable")
    if metrics is not None and metrics.status == "False":
        return "series_missing" if metrics.reason == "SeriesMissing" else "metrics_unavailable"
    if spec.scaling.mode != "Auto":
        return "not_auto"
    capacity = decision.condition("CapacityLimited")
    if capacity is not None and capacity.status == "True":
        return "capacity_limited"
    named = [rule for rule in decision.rules if rule in DECISION_REASONS]
    if named:
        return named[0]
    sla = decision.condition("SLAMet")
    if sla is not None and sla.status == "False":
        return "sla_missed"
    drivers = {"scale_up": "sla_at_risk", "scale_down": "load_fell", "retune": "load_changed"}
    return drivers.get(action, "steady")


def count_error(namespace: str, pool: str) -> None:
    ERRORS.labels(namespace=namespace, pool=pool).inc()
