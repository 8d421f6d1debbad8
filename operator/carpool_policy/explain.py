"""Explanations: the metrics check, the status conditions and the reason a person reads.

Contract: `metrics_problem()` says whether the observation may be acted on at all, as
(condition reason, message) or None. `conditions_for()` returns MetricsAvailable, SLAMet,
SLAReachable and CapacityLimited, always all four, in that order. `reason_for()` is one line
with the numbers behind the decision (rates, token lengths, measured queue delay and service time
against the queue budget, the model's need, what damping or capacity held back, which limits
changed) and ends with `rules: ...`, every rule of `RULES` that changed the outcome; the
operator uses it as the Event message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from carpool_policy.tuning import Tuning
from carpool_policy.types import (
    BURST_WINDOW_SECONDS,
    Condition,
    EndpointLimits,
    EndpointObservation,
    Observation,
    PoolSpec,
)

if TYPE_CHECKING:
    from carpool_policy.decide import Step

# Every rule that can change a decision's outcome, by the name the reason and the operator's
# `carpool_control_decisions_total{reason}` label use (carpool_operator.control_metrics).
RULES = (
    "metrics_unavailable",  # Prometheus down, no samples or stale: hold everything
    "series_missing",  # an endpoint's arrival rate is missing: no scale-down
    "queue_wait_missing",  # an SLA endpoint has traffic but no queue delay measured: no scale-down
    "model_unbounded",  # model: ready pods overloaded; measured: a finite queue. Ratio sizes up
    "model_pessimistic",  # model: ready pods over target; measured: a quiet queue. Anchored down
    "anchor_held",  # pods starting: the model keeps the level of the last settled measurement
    "queue_breach",  # measured queue delay p95 over its budget: scale up, whatever the model says
    "operating_point",  # step up bounded by a recent count measured within budget, rate-scaled
    "queue_within_budget",  # measured queue delay within the headroom: the model may not scale up
    "queue_not_low",  # measured queue delay above the quiet fraction: no scale-down
    "burst_reserve",  # scale-down stops at what the last hour's peak rate and bursts need
    "scale_down_headroom",  # the scale-down model, at its tighter headroom, holds more pods
    "sla_unreachable",  # service time alone breaks a TTFT budget: sized for the queue part
    "scale_up_step",  # scale-up bounded by scaling.maxScaleUpStep
    "stabilizing",  # scale-down held by the stabilization window
    "scale_down_step",  # scale-down: a quarter of the replicas per step, a step a minute
    "capacity_limited",  # pods Pending for lack of GPUs: no more added
    "max_replicas",  # the model or the guard asks for more than replicas.max
    "not_auto",  # Recommend or Manual mode: nothing applied
)


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
    elif unmeasured := _burst_window_missing(spec, observation):
        metrics = Condition(
            "MetricsAvailable",
            "True",
            "BurstWindowMissing",
            f"no arrival rate over the last {BURST_WINDOW_SECONDS:g} s for "
            f"{', '.join(unmeasured)}, which needs two samples in it: the burst reserve (with a "
            f"profile) reads each minute's rate instead and misses bursts shorter than a "
            f"minute; scrape the workers at least every {BURST_WINDOW_SECONDS / 2:g} s",
        )
    else:
        metrics = Condition("MetricsAvailable", "True", "MetricsFresh", "all series present")
    return (
        metrics,
        _sla_condition(spec, observation, problem),
        _reachable(step),
        _capacity(spec, observation, step),
    )


def _burst_window_missing(spec: PoolSpec, observation: Observation) -> list[str]:
    """The SLA endpoints with an arrival rate but none over the burst window (Prometheus
    scrapes too rarely for it)."""
    return [
        e.name
        for e in spec.endpoints
        if e.has_sla
        and (seen := observation.endpoints.get(e.name)) is not None
        and seen.arrival_rate_per_second is not None
        and seen.burst_arrival_rate_per_second is None
    ]


def _reachable(step: Step | None) -> Condition:
    """SLAReachable: False when an endpoint's measured service time alone (its own prefill,
    which no replica count shortens) exceeds its TTFT budget."""
    if step is None:
        return Condition("SLAReachable", "Unknown", "NoMeasurements", "metrics unavailable")
    broken = [
        f"{name} service time {_ms(e.service_time or 0.0)} (median p95) alone exceeds its TTFT "
        f"budget {_ms(e.load.budget_seconds or 0.0)}; sizing for a queue delay of "
        f"{_ms(e.queue_budget or 0.0)}"
        for name, e in step.estimates.items()
        if e.unreachable
    ]
    if broken:
        return Condition("SLAReachable", "False", "ServiceTimeExceedsBudget", "; ".join(broken))
    return Condition(
        "SLAReachable", "True", "QueueBudgetPositive", "every TTFT budget exceeds its service time"
    )


def _sla_condition(
    spec: PoolSpec, observation: Observation, problem: tuple[str, str] | None
) -> Condition:
    with_sla = [e for e in spec.endpoints if e.has_sla]
    if not with_sla:
        return Condition("SLAMet", "True", "NoSLA", "no endpoint has an SLA")
    if problem is not None:
        return Condition("SLAMet", "Unknown", "NoMeasurements", "metrics unavailable")
    missed, met = [], []
    for e in with_sla:
        seen = observation.endpoints.get(e.name) or EndpointObservation()
        for label, measured, budget in (
            ("TTFT", seen.ttft_p95_seconds, e.ttft_p95_seconds),
            ("queue wait", seen.queue_wait_p95_seconds, e.queue_wait_p95_seconds),
        ):
            if measured is None or budget is None:
                continue
            text = f"{e.name} p95 {label} {_ms(measured)}"
            if measured > budget:
                missed.append(f"{text} > {_ms(budget)}")
            else:
                met.append(f"{text} <= {_ms(budget)}")
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
    """`limits` are the limits Auto would set (in Recommend mode they are not applied)."""
    if step.replicas > step.current:
        head = f"scale up {step.current} -> {step.replicas} replicas"
    elif step.replicas < step.current:
        head = f"scale down {step.current} -> {step.replicas} replicas"
    else:
        head = f"hold {step.replicas} replicas"
    parts = [head]
    if spec.scaling.mode != "Auto":
        parts.append(f"mode {spec.scaling.mode}: recommend {step.recommended}, applying nothing")
    parts += [_endpoint_text(name, e) for name, e in step.estimates.items()]
    if step.plan is not None:
        needed = (
            f"more than {spec.max_replicas}" if step.needed > spec.max_replicas else step.needed
        )
        if "model_unbounded" in step.rules:
            parts.append(f"the measured queue delays need {needed} replicas (HPA's ratio rule)")
        else:
            parts.append(
                f"model needs {needed} replicas for p{100 * tuning.planning_quantile:g} queue"
                f" delay within {100 * tuning.budget_headroom:g}% of each queue budget"
            )
    if (floor := step.held_for_headroom) is not None:
        # The scale-down model only bounds a scale-down: at the pool's size or more, it holds.
        verdict = "no scale-down" if floor >= step.current else f"scale-down stops at {floor}"
        parts.append(
            f"{verdict}: the scale-down model needs {floor} replicas within the tighter"
            f" {100 * tuning.scale_down_headroom:g}% of each queue budget"
        )
    for finite, text in (
        (True, "model anchored at the measured queue delay"),
        (False, "model predicts an unbounded queue where a finite one was measured"),
    ):
        named = {
            n: pm
            for n, pm in step.anchors.items()
            if math.isinf(pm[0]) != finite and n not in step.held_anchors
        }
        # An unbounded prediction matters only where it made the measurement size the step.
        if named and (finite or "model_unbounded" in step.rules):
            parts.append(
                f"{text} ("
                + ", ".join(
                    f"{name} predicted {_ms(predicted)}, measured {_ms(measured)}"
                    for name, (predicted, measured) in named.items()
                )
                + ")"
            )
    if step.operating_bound is not None:
        bound, asked = step.operating_bound
        parts.append(
            f"step up to {bound} replicas, not {asked}: what the replica counts measured within"
            f" budget over the last {tuning.operating_point_memory_seconds / 60:g} min need at"
            " the rates now"
        )
    if step.held_anchors:
        starting = step.current - step.ready
        parts.append(
            f"while {starting} {'pod starts' if starting == 1 else 'pods start'}, the model"
            " keeps the level measured when every pod was last ready ("
            + ", ".join(
                f"{name} measured now {_ms(step.anchors[name][1])}" for name in step.held_anchors
            )
            + ": the backlog the pods asked for will clear)"
        )
    if step.reserve is not None:
        peaks = ", ".join(
            f"{name} {e.reserve_rate:.2f} req/s sustained, {e.burst_rate:.2f} in "
            f"{BURST_WINDOW_SECONDS:g} s"
            for name, e in step.estimates.items()
            if e.load.has_sla
        )
        parts.append(
            f"burst reserve {step.reserve} replicas: queue delay within each TTFT budget at the "
            f"highest rate sustained over the last {tuning.burst_memory_seconds / 60:g} min, "
            f"and its busiest {BURST_WINDOW_SECONDS:g} s served as they come ({peaks})"
        )
    if step.damping_note:
        parts.append(step.damping_note)
    retuned = [
        f"{name} maxBatchSize {held[name].max_batch_size}->{new.max_batch_size}"
        f" window {held[name].batch_window_milliseconds}->{new.batch_window_milliseconds} ms"
        for name, new in limits.items()
        if new != held.get(name)
    ]
    if retuned:
        verb = "retune " if spec.scaling.mode == "Auto" else "Auto would retune "
        parts.append(verb + ", ".join(retuned))
    if step.rules:
        parts.append("rules: " + ", ".join(step.rules))
    return "; ".join(parts)


def _endpoint_text(name: str, e) -> str:
    load = e.load
    text = f"{name} {e.observed_rate:.2f} req/s"
    if e.rate_missing:
        text = f"{name} arrival rate missing"
    elif load.arrival_rate > e.observed_rate * 1.001:
        text += f" (planning for {load.arrival_rate:.2f}: a backlog to clear)"
    text += f", prompt {load.prompt_tokens:.0f} / output {load.generated_tokens:.0f} tokens"
    if not load.has_sla:
        return text + (", backlogged" if load.backlogged else "")
    delay = "missing" if e.queue_delay_p95 is None else _ms(e.queue_delay_p95)
    budget = "unknown" if e.queue_budget is None else _ms(e.queue_budget)
    text += f", queue delay p95 {delay} (budget {budget})"
    if e.service_time is not None:
        text += f", service time {_ms(e.service_time)}"
        if e.service_time_p95 is not None and e.service_time_p95 > e.service_time:
            text += f" (p95 now {_ms(e.service_time_p95)})"
    if load.budget_seconds is not None:
        text += f" (TTFT budget {_ms(load.budget_seconds)})"
    return text


def _ms(seconds: float) -> str:
    if seconds == float("inf"):
        return "unbounded"
    return f"{seconds * 1000:.0f} ms"
