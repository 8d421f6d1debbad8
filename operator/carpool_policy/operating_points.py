"""Operating points: replica counts the pool was measured to serve within its queue budgets.

Contract (pure):
- `settled_since(previous, current, observation, changed_at, now)`: since when the pool has
  held its count with every pod ready (None while pods start).
- `observed_point(current, estimates, observation, now, settled_at, tuning)` is an
  `OperatingPoint` (`carpool_policy.state`, where it is kept between calls) when the pool has
  held its count with every pod ready for a whole rate window, every SLA endpoint with
  traffic has a queue delay measured within `budget_headroom` of its budget (the share the
  model plans to use) and no throughput class is turning requests away; else None. Its rates
  are each SLA endpoint's busiest arrival rate of the moment (`estimate.peak_rate`): the
  higher of the burst window's and the rate window's.
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

from carpool_policy.estimate import Estimate, peak_rate
from carpool_policy.guard import measured_ratios, turning_away
from carpool_policy.state import OperatingPoint
from carpool_policy.tuning import Tuning
from carpool_policy.types import EndpointObservation, Observation


def sla_rates(estimates: Mapping[str, Estimate], observation: Observation) -> dict[str, float]:
    """Each SLA endpoint's busiest arrival rate now (`estimate.peak_rate`; 0 when missing)."""
    return {
        name: peak_rate(observation.endpoints.get(name) or EndpointObservation()) or 0.0
        for name, e in estimates.items()
        if e.load.has_sla
    }


def settled_since(
    previous: float | None,
    current: int,
    observation: Observation,
    state_changed_at: float | None,
    now: float,
) -> float | None:
    """Since when the pool has held `current` replicas, every one of them ready (None while pods
    start): `previous` (the last call's answer) unless the count changed after it."""
    if observation.ready_replicas < current:
        return None
    if previous is None or (state_changed_at is not None and state_changed_at > previous):
        return now
    return previous


def observed_point(
    current: int,
    estimates: Mapping[str, Estimate],
    observation: Observation,
    now: float,
    settled_at: float | None,
    tuning: Tuning,
) -> OperatingPoint | None:
    # The measurements cover the rate window: a count that has not served all of it (a step
    # down a moment ago, pods that just became ready) was not what they measured.
    if current <= 0 or settled_at is None or now - settled_at < tuning.rate_window_seconds:
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
