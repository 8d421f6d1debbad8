"""Stage 3, guard: measured queue delay overrides the model.

Contract (pure): `guard(up, down, current, estimates, observation, tuning, model_unbounded)`
takes the model's scale-up count `up` and scale-down count `down` and returns a `Guarded` with
both adjusted and the names of the rules that changed them (from `carpool_policy.explain.RULES`):

The measured queue delay (`Estimate.queue_delay_p95`) against the queue budget decides the
direction; the model only sizes the step, except where it cannot:

- `model_unbounded`: the model predicts an ever-growing queue at the ready pods where a finite
  one was measured (`model_unbounded`, from `planner.anchor`), and an SLA endpoint is measured
  past `budget_headroom`: HPA's ratio rule on the measurement (`ratio_step`) sizes the step up
  where it asks for less than the model. Only where every SLA endpoint with traffic was
  measured; a p95 of too little traffic (`min_feedback_rate`) does not size it.
- `queue_breach`: an SLA endpoint's measured queue delay is over its queue budget (with every pod
  ready and enough traffic to trust the p95): at least one replica more, as many as the model
  asks, else the current count grown in proportion to the overshoot (at most double).
- `operating_point`: a step up goes no further than `measured_bound`, the count a recent
  operating point of the pool measured within budget scales to at the rates now
  (`carpool_policy.operating_points`), and at least one replica.
- `queue_within_budget`: every SLA endpoint with traffic is measured within `budget_headroom`
  of its queue budget (the share the model plans to use) and no throughput class is turning
  requests away: the model may not scale up on its own.
- `queue_not_low`: an SLA endpoint's measured queue delay is above `queue_quiet_fraction` of its
  budget: no scale-down. Between that fraction and the headroom the pool holds.
- `queue_wait_missing`: an SLA endpoint has traffic but no queue-delay measurement (its series
  is missing): no scale-down. Missing data is never read as zero.
- `series_missing`: an endpoint's arrival rate is missing: no scale-down.

An endpoint without a known queue budget (TTFT budget only, service time not yet measured) is
judged by its measured TTFT against the TTFT budget instead, so a breach is never ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from carpool_policy.estimate import Estimate
from carpool_policy.tuning import Tuning
from carpool_policy.types import EndpointObservation, Observation


@dataclass(frozen=True)
class Guarded:
    up: int
    down: int
    rules: tuple[str, ...]
    breached: tuple[str, ...]  # SLA endpoints measured over their queue budget
    bounded_from: int | None = None  # the step up `operating_point` bounded


def guard(
    up: int,
    down: int,
    current: int,
    estimates: Mapping[str, Estimate],
    observation: Observation,
    tuning: Tuning,
    model_unbounded: bool = False,
    measured_bound: int | None = None,
) -> Guarded:
    rules: list[str] = []
    if model_unbounded and up > current:
        ratios = measured_ratios(estimates, observation)
        if ratios is not None:
            judged = (
                ratio
                for name, ratio in ratios.items()
                if estimates[name].observed_rate >= tuning.min_feedback_rate
            )
            worst = max(judged, default=0.0)
            measured_up = max(current, ratio_step(worst, observation, current, tuning))
            if worst > tuning.budget_headroom and measured_up < up:
                up = measured_up
                rules.append("model_unbounded")
    settled = observation.ready_replicas >= current  # pods starting: not a measured miss
    breached = tuple(
        name for name, e in estimates.items() if settled and _ratio(e, observation, tuning) > 1.0
    )
    if breached:
        worst = max(_ratio(estimates[n], observation, tuning) for n in breached)
        floor = current + max(1, math.ceil(current * min(1.0, worst - 1.0)))
        if up < floor:
            up = floor
            rules.append("queue_breach")
    elif up > current and _all_quiet(estimates, observation, tuning):
        up = current
        rules.append("queue_within_budget")
    bounded_from = None
    if up > current and measured_bound is not None and measured_bound < up:
        bounded_from, up = up, max(current + 1, measured_bound)
        rules.append("operating_point")
    down = max(down, up)
    if down < current:
        held = _scale_down_blocked(estimates, observation, tuning)
        if held:
            down = current
            rules.append(held)
    return Guarded(up, down, tuple(rules), breached, bounded_from)


def measured_ratio(estimate: Estimate, observed: EndpointObservation) -> float | None:
    """Measured queue delay p95 over the queue budget (TTFT over the TTFT budget when the
    queue budget is unknown); None when the endpoint has no SLA or nothing was measured."""
    if not estimate.load.has_sla:
        return None
    if estimate.queue_budget is not None:
        if estimate.queue_delay_p95 is None:
            return None
        return estimate.queue_delay_p95 / estimate.queue_budget
    ttft, budget = observed.ttft_p95_seconds, estimate.load.budget_seconds
    return None if ttft is None or budget is None else ttft / budget


def measured_ratios(
    estimates: Mapping[str, Estimate], observation: Observation
) -> dict[str, float] | None:
    """The measured ratio of every SLA endpoint with traffic; None if one was not measured."""
    ratios = {}
    for name, e in estimates.items():
        if e.load.has_sla and e.observed_rate > 0:
            ratio = measured_ratio(e, observation.endpoints.get(name) or EndpointObservation())
            if ratio is None:
                return None
            ratios[name] = ratio
    return ratios


def ratio_step(worst: float, observation: Observation, current: int, tuning: Tuning) -> int:
    """HPA's rule: the pods that measured `worst` grown until it would be `budget_headroom`.
    The ratio was measured on the ready pods, so pods still starting are not counted twice."""
    ready = observation.ready_replicas
    serving = ready if 0 < ready < current else max(current, 1)
    return math.ceil(serving * worst / tuning.budget_headroom)


def _ratio(estimate: Estimate, observation: Observation, tuning: Tuning) -> float:
    if estimate.observed_rate < tuning.min_feedback_rate:
        return 0.0  # a p95 of a handful of requests says little
    seen = observation.endpoints.get(estimate.load.name) or EndpointObservation()
    return measured_ratio(estimate, seen) or 0.0


def turning_away(estimates: Mapping[str, Estimate], observation: Observation) -> tuple[str, ...]:
    """The throughput classes turning requests away: they need capacity no queue budget
    measures."""
    return tuple(
        name
        for name, e in estimates.items()
        if not e.load.has_sla
        and (
            (observation.endpoints.get(name) or EndpointObservation()).rejected_rate_per_second
            or 0.0
        )
        > 0
    )


def _all_quiet(estimates: Mapping[str, Estimate], observation: Observation, tuning: Tuning) -> bool:
    if turning_away(estimates, observation):
        return False
    judged = False
    for name, e in estimates.items():
        seen = observation.endpoints.get(name) or EndpointObservation()
        if not e.load.has_sla:
            continue
        if e.observed_rate <= 0:
            continue
        ratio = measured_ratio(e, seen)
        if ratio is None or ratio > tuning.budget_headroom:
            return False
        judged = True
    return judged


def _scale_down_blocked(
    estimates: Mapping[str, Estimate], observation: Observation, tuning: Tuning
) -> str | None:
    if any(e.rate_missing for e in estimates.values()):
        return "series_missing"
    for name, e in estimates.items():
        if not e.load.has_sla or e.observed_rate <= 0:
            continue
        seen = observation.endpoints.get(name) or EndpointObservation()
        ratio = measured_ratio(e, seen)
        if ratio is None:
            return "queue_wait_missing"
        if ratio > tuning.queue_quiet_fraction:
            return "queue_not_low"
    return None
