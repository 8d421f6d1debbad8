"""Signals from the observation: the load to plan for, and the model's measured error.

Contract:
- `planned_load()` turns one endpoint's observation into the `EndpointLoad` the planner sizes
  for: the arrival rate projected ahead over `scale_up_lead_seconds` when it is rising (pods
  take that long to start), plus the queue beyond its steady-state length drained over
  `backlog_drain_seconds`. Missing token means fall back to the last known, then to defaults.
- `updated_correction()` folds measured / predicted queueing (p95 TTFT above the floor no
  scaling can beat) into a smoothed, bounded multiplicative correction of the model's waits
  (geometric moving average): a queueing model off by a constant factor converges to the
  truth while one noisy window moves it little.
- `violation_floor()` is the direct feedback: an SLA measured as broken now asks for more
  replicas than there are, whatever the model says.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from carpool_policy.capacity import EndpointLoad
from carpool_policy.tuning import Tuning
from carpool_policy.types import (
    EndpointLimits,
    EndpointObservation,
    EndpointSpec,
    Observation,
    PoolSpec,
)


@dataclass(frozen=True)
class LoadSignal:
    load: EndpointLoad
    observed_rate: float
    rising: bool  # the projection added load for a rising rate or a growing queue


def planned_load(
    endpoint: EndpointSpec,
    observed: EndpointObservation,
    previous_rate: float | None,
    seconds_since_previous: float | None,
    known_tokens: tuple[float, float] | None,
    correction: float,
    tuning: Tuning,
) -> LoadSignal:
    rate = max(0.0, observed.arrival_rate_per_second or 0.0)
    projected = rate
    if previous_rate is not None and seconds_since_previous and seconds_since_previous > 0:
        growth = (rate - previous_rate) / seconds_since_previous
        if growth > 0:
            projected = min(
                rate + growth * tuning.scale_up_lead_seconds,
                rate * tuning.max_burst_projection,
            )
    waiting = max(0.0, observed.waiting or 0.0)
    # Little's law: a queue within budget holds about rate * budget requests; beyond that
    # the excess is a burst the current pods are not draining.
    steady_queue = rate * (endpoint.ttft_p95_seconds or 0.0)
    excess = max(0.0, waiting - steady_queue) if endpoint.has_sla else 0.0
    planned = projected + excess / tuning.backlog_drain_seconds

    prompt, generated = known_tokens or (
        tuning.default_prompt_tokens,
        tuning.default_generated_tokens,
    )
    if observed.mean_prompt_tokens is not None and observed.mean_prompt_tokens > 0:
        prompt = observed.mean_prompt_tokens
    if observed.mean_generated_tokens is not None and observed.mean_generated_tokens > 0:
        generated = observed.mean_generated_tokens
    load = EndpointLoad(
        name=endpoint.name,
        priority=endpoint.priority,
        arrival_rate=planned,
        prompt_tokens=prompt,
        generated_tokens=max(1.0, generated),
        budget_seconds=endpoint.ttft_p95_seconds,
        correction=correction,
        backlogged=waiting >= 1.0,
    )
    return LoadSignal(load=load, observed_rate=rate, rising=planned > rate * 1.001)


def updated_correction(
    previous: float, measured_p95: float, predicted_p95: float, floor_p95: float, tuning: Tuning
) -> float:
    """Geometric moving average of the measured queueing over the predicted queueing (each the
    p95 TTFT above the no-queueing floor), within `correction_bounds`. When the model predicts
    almost no queueing the ratio says nothing, and the correction is kept."""
    low, high = tuning.correction_bounds
    predicted_queueing = predicted_p95 - floor_p95
    if not math.isfinite(predicted_p95) or predicted_queueing < tuning.min_predicted_queueing:
        return previous
    ratio = min(high, max(low, (measured_p95 - floor_p95) / predicted_queueing))
    weight = tuning.correction_weight
    blended = math.exp((1 - weight) * math.log(previous) + weight * math.log(ratio))
    return min(high, max(low, blended))


def violation_floor(
    endpoint: EndpointSpec, observed: EndpointObservation, current: int, tuning: Tuning
) -> int:
    """Replicas at least needed when the endpoint's measured p95 TTFT exceeds its budget:
    the current count grown in proportion to the overshoot (at least one more, at most double).
    """
    budget = endpoint.ttft_p95_seconds
    measured = observed.ttft_p95_seconds
    rate = observed.arrival_rate_per_second or 0.0
    if budget is None or measured is None or measured <= budget or rate < tuning.min_feedback_rate:
        return 0
    overshoot = min(1.0, measured / budget - 1.0)
    return current + max(1, math.ceil(current * overshoot))


def protect_missing_endpoints(
    limits: Mapping[str, EndpointLimits],
    spec: PoolSpec,
    observation: Observation,
    tuning: Tuning,
) -> dict[str, EndpointLimits]:
    """When the pool cannot grow, give way to the endpoints measured missing their SLA.

    Every endpoint of lower priority than one whose measured p95 TTFT is over budget drops to
    its smallest batch and shortest window, whatever the model predicted: the measurement
    wins over a model that may be optimistic. Call it only when replicas cannot be added.
    """
    missing = [
        e.priority
        for e in spec.endpoints
        if violation_floor(
            e,
            observation.endpoints.get(e.name) or EndpointObservation(),
            max(observation.ready_replicas, 1),
            tuning,
        )
        > 0
    ]
    if not missing:
        return dict(limits)
    protected = max(missing)
    return {
        e.name: EndpointLimits(e.max_batch_size.min, e.batch_window_milliseconds.min)
        if e.priority < protected
        else limits[e.name]
        for e in spec.endpoints
    }
