"""Operating points: replica counts the pool was measured to serve within its queue budgets.

Contract (pure):
- `observed_point(current, estimates, observation, now, tuning)` is an `OperatingPoint`
  (`carpool_policy.state`, where it is kept between calls) when
  every pod is ready, every SLA endpoint with traffic has a queue delay measured within
  `budget_headroom` of its budget (the share the model plans to use) and no throughput class is
  turning requests away; else None. Its rates are each SLA endpoint's busiest arrival rate of
  the moment (`peak_rate`): the higher of the burst window's and the rate window's.
- `remembered(points, now, tuning)` keeps the points of the last `operating_point_memory_seconds`.
- `step_up_bound(points, rates, current)` is the fewest replicas a step up from `current` needs
  by the pool's own measurements: the smallest of the remembered counts, each grown in
  proportion to the SLA endpoints' rates now over its rates then (the worst endpoint), and at
  least `current + 1`; None where no point speaks for the traffic now (an endpoint with traffic
  that had none then, or no SLA traffic at all).

Why: near the point where requests begin to wait at all, a queue-wait p95 jumps from almost
nothing to a whole prefill (with long prompts, far over a budget shorter than one), and a
model anchored at that jump sizes a step for a queue that one more pod would have removed. A
count the pool held within budget minutes ago, at a similar rate, is better evidence than the
model's extrapolation: the step goes no further than that count scaled to the rate now.
Linear in the rate, as HPA's ratio rule, which errs on the side of capacity: more pods at the
same load per pod queue less, not more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from carpool_policy.estimate import Estimate
from carpool_policy.guard import measured_ratios, turning_away
from carpool_policy.state import OperatingPoint
from carpool_policy.tuning import Tuning
from carpool_policy.types import EndpointObservation, Observation


def peak_rate(observed: EndpointObservation) -> float:
    """The higher of the burst-window and the rate-window arrival rates (0 when missing)."""
    rates = (observed.burst_arrival_rate_per_second, observed.arrival_rate_per_second)
    return max((max(0.0, r) for r in rates if r is not None), default=0.0)


def sla_rates(estimates: Mapping[str, Estimate], observation: Observation) -> dict[str, float]:
    """Each SLA endpoint's `peak_rate` now."""
    return {
        name: peak_rate(observation.endpoints.get(name) or EndpointObservation())
        for name, e in estimates.items()
        if e.load.has_sla
    }


def observed_point(
    current: int,
    estimates: Mapping[str, Estimate],
    observation: Observation,
    now: float,
    tuning: Tuning,
) -> OperatingPoint | None:
    if current <= 0 or observation.ready_replicas < current:
        return None
    ratios = measured_ratios(estimates, observation)
    if not ratios or any(ratio > tuning.budget_headroom for ratio in ratios.values()):
        return None
    if turning_away(estimates, observation):
        return None
    return OperatingPoint(now, current, sla_rates(estimates, observation))


def remembered(
    points: Sequence[OperatingPoint], now: float, tuning: Tuning
) -> tuple[OperatingPoint, ...]:
    return tuple(p for p in points if now - tuning.operating_point_memory_seconds <= p.at <= now)


def step_up_bound(
    points: Sequence[OperatingPoint], rates: Mapping[str, float], current: int
) -> int | None:
    busy = {name: rate for name, rate in rates.items() if rate > 0}
    if not busy:
        return None
    counts = []
    for point in points:
        if any(point.rates.get(name, 0.0) <= 0 for name in busy):
            continue  # the point saw none of this endpoint's traffic: it says nothing of it
        growth = max(rate / point.rates[name] for name, rate in busy.items())
        counts.append(math.ceil(point.replicas * growth - 1e-9))
    return max(current + 1, min(counts)) if counts else None
