"""Stage 1, estimate: what each endpoint's observation says, in the terms the policy plans in.

Contract (pure): `estimate(endpoint, observed, previous_rate, seconds_since_previous,
known_tokens, tuning)` returns one endpoint's `Estimate`:
- `load`, the `EndpointLoad` the model sizes for: the arrival rate projected ahead over
  `scale_up_lead_seconds` when it is rising (pods take that long to start), plus the queue
  beyond its steady-state length drained over `backlog_drain_seconds`; missing token means fall
  back to the last known, then to defaults;
- the measured queue-wait and service-time p95s, None when their series are missing;
- the queue budget: `sla.queueWaitP95Milliseconds` when given, else the TTFT budget less the
  measured service-time p95 (TTFT = queue wait + service time, and replicas change only the
  first), at least `unreachable_queue_share` of the TTFT budget; None while the service time
  has not been measured (the model's own service-time floor then stands in);
- `unreachable`: the measured service-time p95 alone exceeds the TTFT budget, so no replica
  count can meet it; the policy sizes for the queue part and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from carpool_policy.capacity import EndpointLoad
from carpool_policy.tuning import Tuning
from carpool_policy.types import EndpointObservation, EndpointSpec


@dataclass(frozen=True)
class Estimate:
    load: EndpointLoad
    observed_rate: float  # requests per second measured (0 when the series is missing)
    rate_missing: bool
    queue_wait_p95: float | None
    service_time_p95: float | None
    queue_budget: float | None
    unreachable: bool


def estimate(
    endpoint: EndpointSpec,
    observed: EndpointObservation,
    previous_rate: float | None,
    seconds_since_previous: float | None,
    known_tokens: tuple[float, float] | None,
    tuning: Tuning,
) -> Estimate:
    rate = max(0.0, observed.arrival_rate_per_second or 0.0)
    budget, unreachable = queue_budget(endpoint, observed.service_time_p95_seconds, tuning)
    prompt, generated = known_tokens or (
        tuning.default_prompt_tokens,
        tuning.default_generated_tokens,
    )
    if observed.mean_prompt_tokens is not None and observed.mean_prompt_tokens > 0:
        prompt = observed.mean_prompt_tokens
    if observed.mean_generated_tokens is not None and observed.mean_generated_tokens > 0:
        generated = observed.mean_generated_tokens
    waiting = max(0.0, observed.waiting or 0.0)
    load = EndpointLoad(
        name=endpoint.name,
        priority=endpoint.priority,
        arrival_rate=_planned_rate(
            endpoint, rate, waiting, budget, previous_rate, seconds_since_previous, tuning
        ),
        prompt_tokens=prompt,
        generated_tokens=max(1.0, generated),
        budget_seconds=endpoint.ttft_p95_seconds,
        queue_budget_seconds=budget,
        backlogged=waiting >= 1.0,
    )
    return Estimate(
        load=load,
        observed_rate=rate,
        rate_missing=observed.arrival_rate_per_second is None,
        queue_wait_p95=observed.queue_wait_p95_seconds,
        service_time_p95=observed.service_time_p95_seconds,
        queue_budget=budget,
        unreachable=unreachable,
    )


def queue_budget(
    endpoint: EndpointSpec, service_time_p95: float | None, tuning: Tuning
) -> tuple[float | None, bool]:
    """(queue budget in seconds or None, whether service time alone breaks the TTFT budget)."""
    ttft = endpoint.ttft_p95_seconds
    unreachable = ttft is not None and service_time_p95 is not None and service_time_p95 >= ttft
    if endpoint.queue_wait_p95_seconds is not None:
        return endpoint.queue_wait_p95_seconds, unreachable
    if ttft is None or service_time_p95 is None:
        return None, False
    return max(ttft - service_time_p95, tuning.unreachable_queue_share * ttft), unreachable


def _planned_rate(
    endpoint: EndpointSpec,
    rate: float,
    waiting: float,
    budget: float | None,
    previous_rate: float | None,
    seconds_since_previous: float | None,
    tuning: Tuning,
) -> float:
    projected = rate
    if previous_rate is not None and seconds_since_previous and seconds_since_previous > 0:
        growth = (rate - previous_rate) / seconds_since_previous
        if growth > 0:
            projected = min(
                rate + growth * tuning.scale_up_lead_seconds,
                rate * tuning.max_burst_projection,
            )
    # Little's law: a queue within its budget holds about rate * budget requests; beyond that
    # the excess is a burst the current pods are not draining.
    steady_queue = rate * (budget if budget is not None else endpoint.ttft_p95_seconds or 0.0)
    excess = max(0.0, waiting - steady_queue) if endpoint.has_sla else 0.0
    return projected + excess / tuning.backlog_drain_seconds
