"""Explanations: the metrics check, the status conditions and the reason a person reads.

Contract: `metrics_problem()` says whether the observation may be acted on at all, as
(condition reason, message) or None. `conditions_for()` returns MetricsAvailable, SLAMet and
CapacityLimited, always all three, in that order. `reason_for()` is one line with the numbers
behind the decision (rates, token lengths, predicted and measured TTFT against budgets, what
damping or capacity held back, which limits changed); the operator uses it as the Event message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from carpool_policy.tuning import Tuning
from carpool_policy.types import Condition, EndpointLimits, Observation, PoolSpec

if TYPE_CHECKING:
    from carpool_policy.decide import Step


def stale_after(spec: PoolSpec, tuning: Tuning) -> float:
    return tuning.stale_after_intervals * spec.scaling.interval_seconds


def metrics_problem(
    observation: Observation, spec: PoolSpec, now: float, tuning: Tuning
) -> tuple[str, str] | None:
    if not observation.available:
        detail = observation.unavailable_reason or "no answer"
        return "PrometheusUnavailable", f"Prometheus could not be queried ({detail})"
    if observation.sampled_at is None:
        return "NoSamples", "Prometheus has no samples for this pool's workers"
    age = now - observation.sampled_at
    limit = stale_after(spec, tuning)
    if age > limit:
        return "MetricsStale", f"the newest sample is {age:.0f} s old (limit {limit:.0f} s)"
    if all(
        (seen := observation.endpoints.get(e.name)) is None or seen.arrival_rate_per_second is None
        for e in spec.endpoints
    ):
        return "NoSamples", "no arrival-rate series for any endpoint"
    return None


def conditions_for(
    spec: PoolSpec,
    observation: Observation,
    problem: tuple[str, str] | None,
    step: Step | None,
) -> tuple[Condition, ...]:
    if problem is not None:
        metrics = Condition("MetricsAvailable", "False", problem[0], problem[1] + "; holding")
    elif step is not None and step.missing_rates:
        names = ", ".join(step.missing_rates)
        metrics = Condition(
            "MetricsAvailable",
            "False",
            "SeriesMissing",
            f"no arrival rate for {names}; no scale-down until it returns",
        )
    else:
        metrics = Condition("MetricsAvailable", "True", "MetricsFresh", "all series present")
    return (metrics, _sla_condition(spec, observation, problem), _capacity(spec, observation, step))


def _sla_condition(
    spec: PoolSpec, observation: Observation, problem: tuple[str, str] | None
) -> Condition:
    with_sla = [e for e in spec.endpoints if e.has_sla]
    if not with_sla:
        return Condition("SLAMet", "True", "NoSLA", "no endpoint has a TTFT SLA")
    if problem is not None:
        return Condition("SLAMet", "Unknown", "NoMeasurements", "metrics unavailable")
    missed, met = [], []
    for e in with_sla:
        seen = observation.endpoints.get(e.name)
        if seen is None or seen.ttft_p95_seconds is None:
            continue
        text = f"{e.name} p95 TTFT {_ms(seen.ttft_p95_seconds)}"
        if seen.ttft_p95_seconds > e.ttft_p95_seconds:
            missed.append(f"{text} > {_ms(e.ttft_p95_seconds)}")
        else:
            met.append(f"{text} <= {_ms(e.ttft_p95_seconds)}")
    if missed:
        return Condition("SLAMet", "False", "BudgetExceeded", "; ".join(missed))
    if not met:
        return Condition("SLAMet", "Unknown", "NoMeasurements", "no TTFT measured yet")
    return Condition("SLAMet", "True", "WithinBudget", "; ".join(met))


def _capacity(spec: PoolSpec, observation: Observation, step: Step | None) -> Condition:
    shrunk = step.plan.shrunk if step is not None and step.plan is not None else ()
    protection = f"; reduced the batch share of {', '.join(shrunk)}" if shrunk else ""
    pending = observation.pending_unschedulable_replicas
    if pending > 0:
        return Condition(
            "CapacityLimited",
            "True",
            "PodsUnschedulable",
            f"{pending} pod(s) Pending for lack of GPUs; adding no more{protection}",
        )
    if step is not None and step.needed > spec.max_replicas:
        return Condition(
            "CapacityLimited",
            "True",
            "MaxReplicasReached",
            f"the SLAs need more than spec.replicas.max={spec.max_replicas}{protection}",
        )
    return Condition("CapacityLimited", "False", "CapacitySufficient", "all pods schedulable")


def reason_for(
    spec: PoolSpec,
    step: Step,
    limits: Mapping[str, EndpointLimits],
    held: Mapping[str, EndpointLimits],
    tuning: Tuning,
) -> str:
    if step.replicas > step.current:
        head = f"scale up {step.current} -> {step.replicas} replicas"
    elif step.replicas < step.current:
        head = f"scale down {step.current} -> {step.replicas} replicas"
    else:
        head = f"hold {step.replicas} replicas"
    parts = [head]
    if spec.scaling.mode != "Auto":
        parts.append(f"mode {spec.scaling.mode}: recommend {step.recommended}, applying nothing")
    forecasts = step.plan.forecast.endpoints if step.plan is not None else {}
    for load in step.loads:
        observed = step.observed_rates.get(load.name, 0.0)
        text = f"{load.name} {observed:.2f} req/s"
        if load.arrival_rate > observed * 1.001:
            text += f" (planning for {load.arrival_rate:.2f}: rising or queueing)"
        text += f", prompt {load.prompt_tokens:.0f} / output {load.generated_tokens:.0f} tokens"
        predicted = forecasts.get(load.name)
        if load.budget_seconds is not None:
            if predicted is not None:
                text += f", predicted p95 TTFT {_ms(predicted.ttft_p95_seconds)}"
            text += f" (budget {_ms(load.budget_seconds)})"
            if abs(load.correction - 1.0) >= 0.05:
                text += f", model correction x{load.correction:.2f}"
        elif load.backlogged:
            text += ", backlogged"
        parts.append(text)
    if step.plan is not None:
        needed = (
            f"more than {spec.max_replicas}" if step.needed > spec.max_replicas else step.needed
        )
        parts.append(
            f"model needs {needed} replicas for p{100 * tuning.planning_quantile:g} TTFT within"
            f" {100 * tuning.budget_headroom:g}% of each budget"
        )
    if step.damping_note:
        parts.append(step.damping_note)
    if step.capacity_limited:
        parts.append("pods Pending for lack of GPUs: adding none")
    if step.missing_rates:
        parts.append(f"arrival rate missing for {', '.join(step.missing_rates)}: no scale-down")
    retuned = [
        f"{name} maxBatchSize {held[name].max_batch_size}->{new.max_batch_size}"
        f" window {held[name].batch_window_milliseconds}->{new.batch_window_milliseconds} ms"
        for name, new in limits.items()
        if new != held.get(name)
    ]
    if retuned:
        parts.append("retune " + ", ".join(retuned))
    return "; ".join(parts)


def _ms(seconds: float) -> str:
    if seconds == float("inf"):
        return "unbounded"
    return f"{seconds * 1000:.0f} ms"
