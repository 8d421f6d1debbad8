"""The control loop's one step for one pool: observe → ``carpool_policy.decide`` → apply.

Contract: ``control_step(kube, pool, cache, access, gpu_hour_price, now)`` reads the pool's
worker Deployment and pods, takes the pool's signals from ``cache`` (one batched PromQL read
shared by every pool on one Prometheus, see ``MetricsCache``), reads the pool's profile
ConfigMap, calls ``decide`` with the policy state kept in the pool's status, and then, by
``spec.scaling.mode``:

- ``Auto``: writes the worker count (the scaler's own field manager) and the batch limits
  (status → limits ConfigMap through ``reconcile`` → pushed to each ready pod's admin API);
- ``Recommend``: changes nothing, reports the recommendation in status and Events;
- ``Manual``: does nothing (``reconcile`` applies ``manualReplicas``).

Status always gets the per-endpoint signals, the conditions, the policy state and the last
decision; an Event says why, with numbers, whenever replicas or limits change (or would, in
Recommend). Missing or stale metrics reach ``decide`` as such: it holds and says so, and
``diagnose`` turns its reason into one that names the fix (missing scrape labels, no scrape,
stale samples, an unreachable or refusing Prometheus). ``ProfileLoaded`` says whether the
profile ConfigMap could be used. Each of the two posts an Event when its status or reason
changes (Warning when it turns False). The pool's own ``spec.prometheus.url`` is queried
without the operator's credentials (``access`` holds them for ``--prometheus-url`` only).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from carpool_operator import (
    conditions,
    control_metrics,
    diagnose,
    ledger,
    limits,
    names,
    profiles,
    push,
    reconcile,
)
from carpool_operator.builders import build_replicas
from carpool_operator.kube import Kube, now_rfc3339
from carpool_operator.observe import build_observation
from carpool_operator.prometheus import (
    MetricsUnavailable,
    PoolMetrics,
    PrometheusAccess,
    fetch_pool_metrics,
    scrape_facts,
)
from carpool_policy import Decision, PolicyState, PoolSpec, Profile, decide
from carpool_policy.tuning import DEFAULT_TUNING

Obj = dict[str, Any]
log = logging.getLogger("carpool.control")
NO_URL = (
    "no Prometheus URL: set the chart's operator.prometheusUrl (the operator's --prometheus-url) "
    "or the pool's spec.prometheus.url"
)


class MetricsCache:
    """One PromQL batch per Prometheus per ``max_age_seconds``, shared by all pools' timers."""

    def __init__(self, window: str = "1m", max_age_seconds: float = 2.0):
        self.window, self.max_age_seconds = window, max_age_seconds
        self._lock = threading.Lock()
        self._entries: dict[PrometheusAccess, tuple[float, dict | None, str | None]] = {}

    def get(
        self, access: PrometheusAccess, pool_key: tuple[str, str]
    ) -> tuple[PoolMetrics | None, str | None]:
        with self._lock:
            fetched_at, pools, error = self._entries.get(access, (0.0, None, None))
            if time.monotonic() - fetched_at > self.max_age_seconds:
                try:
                    pools, error = fetch_pool_metrics(access, self.window), None
                except MetricsUnavailable as failure:
                    pools, error = None, str(failure)
                self._entries[access] = (time.monotonic(), pools, error)
        return (pools or {}).get(pool_key), error


@dataclasses.dataclass
class StepResult:
    decision: Decision | None
    pushed: list[push.PushResult]
    conditions: tuple[conditions.Condition, ...] = ()


# Parsed profiles by (namespace, ConfigMap name): re-parsed only when the ConfigMap changes.
_profiles: dict[tuple[str, str], tuple[str, Profile | None, conditions.Condition | None]] = {}


def _profile(
    kube: Kube, pool: Obj, spec: PoolSpec
) -> tuple[Profile | None, conditions.Condition | None]:
    name = spec.scaling.profile_config_map
    if not name:
        return None, None
    namespace = pool["metadata"]["namespace"]
    config_map = kube.get("ConfigMap", namespace, name)
    if config_map is None:
        _profiles.pop((namespace, name), None)
        return profiles.load_profile(name, None)
    version = config_map["metadata"].get("resourceVersion", "")
    cached = _profiles.get((namespace, name))
    if cached is not None and cached[0] == version:
        return cached[1], cached[2]
    profile, condition = profiles.load_profile(name, config_map)
    _profiles[(namespace, name)] = (version, profile, condition)
    return profile, condition


def pool_access(pool: Mapping[str, Any], access: PrometheusAccess) -> PrometheusAccess:
    """The operator's Prometheus, or the pool's own URL without the operator's credentials."""
    url = ((pool.get("spec") or {}).get("prometheus") or {}).get("url")
    if not url or url.rstrip("/") == access.url.rstrip("/"):
        return access
    return access.anonymous(url, "spec.prometheus.url")


def worker_addresses(pods: Sequence[Mapping[str, Any]], port: int) -> tuple[str, ...]:
    return tuple(
        sorted(
            f"{p['status']['podIP']}:{port}"
            for p in pods
            if (p.get("status") or {}).get("podIP")
            and (p.get("status") or {}).get("phase") == "Running"
            and not (p.get("metadata") or {}).get("deletionTimestamp")
        )
    )


def _metrics_condition(
    decision: Decision,
    access: PrometheusAccess,
    pool: Obj,
    spec: PoolSpec,
    pods: Sequence[Obj],
    metrics: PoolMetrics | None,
    window: str,
    now: float,
) -> conditions.Condition:
    held = decision.condition("MetricsAvailable")
    shown = conditions.Condition(held.type, held.status, held.reason, held.message)
    if held.status == "True" or held.reason in ("SeriesMissing", "PrometheusUnavailable"):
        return diagnose.metrics_condition(shown, None, None)
    addresses = worker_addresses(pods, worker_port(pool))
    facts = None
    if metrics is None or metrics.sampled_at is None:
        try:
            facts = scrape_facts(access, list(addresses))
        except MetricsUnavailable:
            facts = None
    interval = float(spec.scaling.interval_seconds)
    context = diagnose.PoolContext(
        namespace=pool["metadata"]["namespace"],
        pool=pool["metadata"]["name"],
        url=access.url,
        addresses=addresses,
        sampled_at=None if metrics is None else metrics.sampled_at,
        now=now,
        stale_after_seconds=DEFAULT_TUNING.stale_after_intervals * interval,
        interval_seconds=interval,
        rate_window=window,
        endpoints=tuple(e.name for e in spec.endpoints),
        endpoints_seen=tuple(sorted(metrics.endpoints)) if metrics is not None else (),
    )
    return diagnose.metrics_condition(shown, facts, context)


def _admin_token(kube: Kube, namespace: str, pool_name: str) -> str | None:
    secret = kube.get("Secret", namespace, names.admin_secret_name(pool_name))
    encoded = ((secret or {}).get("data") or {}).get(names.ADMIN_TOKEN_KEY)
    return base64.b64decode(encoded).decode() if encoded else None


def _milliseconds(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000))


def _endpoint_status(spec: PoolSpec, decision: Decision, observation, applied: bool) -> list:
    rows = []
    for endpoint in spec.endpoints:
        seen = observation.endpoints.get(endpoint.name)
        in_force = (decision.limits if applied else observation.limits).get(endpoint.name)
        row: dict[str, Any] = {"name": endpoint.name}
        if seen is not None and seen.arrival_rate_per_second is not None:
            row["arrivalRatePerSecond"] = f"{seen.arrival_rate_per_second:.2f}"
        if seen is not None:
            for key, value in (
                ("queueDelayP95Milliseconds", seen.queue_wait_p95_seconds),
                ("ttftP95Milliseconds", seen.ttft_p95_seconds),
            ):
                if value is not None:
                    row[key] = _milliseconds(value)
        if in_force is not None:
            row.update(in_force.to_dict())
        budget = endpoint.ttft_p95_seconds
        if budget is not None and seen is not None and seen.ttft_p95_seconds is not None:
            row["slaMet"] = seen.ttft_p95_seconds <= budget
        rows.append(row)
    return rows


def _status_mutation(
    pool: Obj,
    spec: PoolSpec,
    observation,
    decision: Decision,
    mode: str,
    applied_limits: bool,
    shown: Sequence[conditions.Condition],
):
    generation = pool["metadata"].get("generation")
    now = now_rfc3339()

    def mutate(live: Obj) -> Obj:
        status = dict(live.get("status") or {})
        status["endpoints"] = _endpoint_status(spec, decision, observation, applied_limits)
        worst = conditions.worst_endpoint(live.get("spec") or {}, status["endpoints"])
        if worst is not None:
            status["worstEndpoint"] = worst
        if mode == "Recommend":
            status["desiredReplicas"] = decision.recommended_replicas
        elif mode == "Auto":
            status["desiredReplicas"] = decision.replicas
        current = [
            c
            for c in status.get("conditions") or []
            if c.get("type") != profiles.PROFILE_LOADED
            or any(s.type == profiles.PROFILE_LOADED for s in shown)
        ]
        for condition in shown:
            current = conditions.set_condition(current, condition, generation, now)
        status["conditions"] = current
        status["policyState"] = decision.state.to_dict()
        status["lastDecision"] = {
            "time": now,
            "reason": decision.reason[:1024],
            "recommendedReplicas": decision.recommended_replicas,
            "recommendedLimits": {
                name: limits.to_dict() for name, limits in decision.recommended_limits.items()
            },
        }
        return status

    return mutate


def _event_reason(decision: Decision, current_replicas: int, mode: str) -> str:
    if mode == "Recommend":
        return "Recommended"
    if decision.replicas > current_replicas:
        return "ScaledUp"
    if decision.replicas < current_replicas:
        return "ScaledDown"
    return "Retuned"


def control_step(
    kube: Kube,
    pool: Obj,
    cache: MetricsCache,
    access: PrometheusAccess,
    gpu_hour_price: str = "",
    now: float | None = None,
) -> StepResult:
    now = time.time() if now is None else now
    meta = pool["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    spec = PoolSpec.from_crd(pool["spec"])
    mode = spec.scaling.mode
    if mode == "Manual":
        return StepResult(None, [])
    deployment = kube.get("Deployment", namespace, names.deployment_name(name))
    if deployment is None:  # reconcile has not created it yet
        return StepResult(None, [])
    pods = kube.list("Pod", namespace, label_selector=names.selector_string(name))
    access = pool_access(pool, access)
    metrics, error = cache.get(access, (namespace, name)) if access.url else (None, NO_URL)
    observation = build_observation(pool, deployment, pods, metrics, error)
    state = PolicyState.from_dict((pool.get("status") or {}).get("policyState") or {})
    profile, profile_condition = _profile(kube, pool, spec)
    decision = decide(observation, spec, state, now, profile)
    metrics_condition = _metrics_condition(
        decision, access, pool, spec, pods, metrics, cache.window, now
    )
    shown = tuple(
        metrics_condition if c.type == metrics_condition.type else conditions.Condition(*_fields(c))
        for c in decision.conditions
    ) + ((profile_condition,) if profile_condition is not None else ())

    apply = mode == "Auto"
    replicas_changed = apply and decision.replicas != observation.desired_replicas
    limits_changed = apply and dict(decision.limits) != dict(observation.limits)
    if replicas_changed:
        kube.apply(build_replicas(pool, decision.replicas), manager=names.SCALER_FIELD_MANAGER)
    kube.update_pool_status(
        namespace,
        name,
        _status_mutation(pool, spec, observation, decision, mode, apply, shown),
    )
    pushed: list[push.PushResult] = []
    if limits_changed:
        pushed = _apply_limits(kube, namespace, name, pods)
    would_change = decision.recommended_replicas != observation.desired_replicas
    if replicas_changed or limits_changed or (mode == "Recommend" and would_change):
        reason = _event_reason(decision, observation.desired_replicas, mode)
        kube.post_event(pool, "Normal", reason, decision.reason)
        log.info("%s/%s %s: %s", namespace, name, reason, decision.reason)
    previous = (pool.get("status") or {}).get("conditions")
    for type_, reason, message in conditions.transition_events(previous, shown, WATCHED):
        kube.post_event(pool, type_, reason, message)
        log.warning("%s/%s %s: %s", namespace, name, reason, message)
    gpus = ledger.gpus_held(pods)
    price = ledger.gpu_hour_price(pool["spec"], gpu_hour_price)
    usage = metrics.usage if metrics is not None else {}
    control_metrics.record(
        namespace,
        name,
        spec,
        observation,
        decision,
        replicas_changed,
        limits_changed,
        shown=shown,
        gpus=gpus,
        gpu_hour_price=price,
        costs=ledger.cost_per_million_tokens(usage, gpus, price),
    )
    return StepResult(decision, pushed, shown)


# Conditions whose changes post an Event (the policy's others move with every decision).
WATCHED = (conditions.METRICS_AVAILABLE, conditions.SLA_REACHABLE, profiles.PROFILE_LOADED)


def _fields(condition) -> tuple[str, str, str, str]:
    return condition.type, condition.status, condition.reason, condition.message


def _apply_limits(kube: Kube, namespace: str, name: str, pods) -> list[push.PushResult]:
    """Status now holds the new limits: re-render the ConfigMap, then push to ready pods."""
    fresh = kube.get("InferencePool", namespace, name)
    if fresh is None:
        return []
    reconcile.reconcile(kube, fresh, "control")
    config_map = kube.get("ConfigMap", namespace, names.limits_configmap_name(name))
    document = limits.parse(((config_map or {}).get("data") or {}).get(names.LIMITS_KEY))
    token = _admin_token(kube, namespace, name)
    if document is None or token is None:
        return []
    return push.push_limits(pods, worker_port(fresh), token, document)


def worker_port(pool: Mapping[str, Any]) -> int:
    return int(((pool.get("spec") or {}).get("worker") or {}).get("port") or 8000)
