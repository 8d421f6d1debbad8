"""The planner: the fewest replicas, and the batch limits, that meet every endpoint's target.

Contract: `plan(loads, spec, profile, tuning, headroom, lowest, highest)` returns a `Plan` whose
replicas lie in [lowest, highest] and whose limits lie inside the spec's bounds. `fits` says
whether the targets are met; when even `highest` replicas cannot meet them the plan is for
`highest` with the throughput classes' shares shrunk (`shrunk` names them).
`anchor` gives the loads the scale-up plans for (the model's level taken from the measured
queue delay, or while pods start from the last settled one where that is more generous), as an
`Anchoring`; `pessimism_corrected` the loads the scale-down plans for (the model as it is,
anchored only where the measurement contradicts it). `burst_reserve` is the fewest replicas a
scale-down may leave: those that would keep each SLA endpoint's queueing within its whole TTFT
budget at the highest rate it sustained over the burst memory, and admit its busiest burst
window over that memory as it comes.

Limits, at the chosen replica count:
- an SLA endpoint gets all the batch slots its bounds allow (a burst admitted at once costs a
  slightly slower step; a burst held back by a full batch costs whole request times of queueing)
  and a batch window from a share of its spare budget;
- a throughput class gets the largest batch (and longest window) that still keeps every SLA
  endpoint inside its budget: it soaks up the spare capacity;
- an SLA endpoint's batch is never cut to make room for another's: prefill runs in priority
  order inside the batch, so fewer slots for a lower-priority SLA endpoint would only move its
  queueing outside the batch (the measured-breach protection in `decide` is the exception,
  when the pool cannot grow).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from carpool_policy.capacity import (
    EndpointLoad,
    PoolForecast,
    forecast,
    meets_targets,
    planned_queueing,
    queue_target,
)
from carpool_policy.tuning import Tuning
from carpool_policy.types import (
    BURST_WINDOW_SECONDS,
    EndpointLimits,
    EndpointSpec,
    IntRange,
    PoolSpec,
)
from carpool_replica.profile import Profile


@dataclass(frozen=True)
class Plan:
    replicas: int
    limits: Mapping[str, EndpointLimits]
    forecast: PoolForecast
    fits: bool
    shrunk: tuple[str, ...] = ()


def plan(
    loads: Sequence[EndpointLoad],
    spec: PoolSpec,
    profile: Profile,
    tuning: Tuning,
    headroom: float,
    lowest: int,
    highest: int,
) -> Plan:
    endpoints = {e.name: e for e in spec.endpoints}
    favourable = most_favourable_limits(loads, endpoints)
    for replicas in range(lowest, highest + 1):
        result = forecast(loads, favourable, replicas, profile, tuning)
        if meets_targets(result, loads, favourable, profile, tuning, headroom):
            return limits_at(loads, endpoints, replicas, profile, tuning, headroom, favourable)
    return limits_at(loads, endpoints, highest, profile, tuning, headroom, favourable)


@dataclass(frozen=True)
class Anchoring:
    """What `anchor` did: the loads the step up plans for, and per SLA endpoint anchored (or
    predicted unbounded) the model's queue delay at the ready pods and the measured one."""

    loads: tuple[EndpointLoad, ...]
    anchors: Mapping[str, tuple[float, float]]  # endpoint: (predicted, measured)
    scales: Mapping[str, float]  # endpoint: the budget scale the measurement gives now
    held: tuple[str, ...] = ()  # endpoints whose budget took the held scale instead


def anchor(
    loads: Sequence[EndpointLoad],
    measured: Mapping[str, float],
    limits: Mapping[str, EndpointLimits],
    ready: int,
    profile: Profile,
    tuning: Tuning,
    held_scales: Mapping[str, float] | None = None,
) -> Anchoring:
    """The model anchored at the measured operating point: where an SLA endpoint's queue delay
    measured at `ready` replicas (`measured`, seconds) is below what the model predicts there,
    its queue budget is scaled by predicted / measured, so the model keeps its shape (how the
    queue falls with replicas) but takes its level from the measurement. A measurement below
    `queue_quiet_fraction` of the budget counts as that fraction (it says only that the queue
    is short). A measurement above the prediction leaves the model as it is: the guard's breach
    rule answers for traffic worse than the model. A prediction of an ever-growing queue where a
    finite one was measured cannot be anchored (no scale maps infinity onto a measurement); it
    is returned as (inf, measured) and `decide` sizes that step from the measurement alone.

    `held_scales` (while pods start): the scales measured when every pod was last ready. An
    endpoint's budget takes the larger of its held scale and the one measured now. A queue
    measured while the pods asked for are starting holds the backlog built before they come,
    which they are asked to clear already: it may make the model's level more generous, never
    stricter, or each rising minute of one shortfall would ask for more pods again."""
    if ready <= 0 or not measured:
        return Anchoring(tuple(loads), {}, {})
    at_ready = forecast(loads, limits, ready, profile, tuning)
    anchored, anchors, scales, held = [], {}, {}, []
    for load in loads:
        seen = measured.get(load.name)
        if seen is None or load.queue_budget_seconds is None:
            anchored.append(load)
            continue
        window = limits[load.name].batch_window_milliseconds / 1000.0
        predicted = planned_queueing(at_ready.endpoints[load.name], window)
        floor = tuning.queue_quiet_fraction * load.queue_budget_seconds
        if math.isinf(predicted):
            anchors[load.name] = (predicted, seen)
        scale = 1.0
        if not math.isinf(predicted) and predicted > max(seen, floor):
            scale = predicted / max(seen, floor)
            scales[load.name] = scale
            anchors[load.name] = (predicted, seen)
        kept = (held_scales or {}).get(load.name, 0.0)
        if kept > scale:
            scale = kept
            held.append(load.name)
            anchors.setdefault(load.name, (predicted, seen))
        anchored.append(replace(load, queue_budget_seconds=load.queue_budget_seconds * scale))
    return Anchoring(tuple(anchored), anchors, scales, tuple(held))


def pessimism_corrected(
    unanchored: Sequence[EndpointLoad],
    anchored: Sequence[EndpointLoad],
    anchors: Mapping[str, tuple[float, float]],
    tuning: Tuning,
) -> tuple[EndpointLoad, ...]:
    """The loads the scale-down model sizes for: each endpoint's load as it is, except where the
    model calls the ready pods over its target (`budget_headroom` of the queue budget) while
    their queue delay was measured quiet (within `queue_quiet_fraction`): there the model's
    level is not an error on the side of capacity but a contradiction (long prompts queue
    behind one another less than its picture says), and the anchored load stands. Without it
    such a pool holds, for nothing, whatever count it once scaled up to."""
    corrected = []
    for load, anchored_load in zip(unanchored, anchored, strict=True):
        predicted, measured = anchors.get(load.name, (math.inf, math.inf))
        budget = load.queue_budget_seconds
        contradicted = (
            budget is not None
            and math.isfinite(predicted)
            and predicted > tuning.budget_headroom * budget
            and measured <= tuning.queue_quiet_fraction * budget
        )
        corrected.append(anchored_load if contradicted else load)
    return tuple(corrected)


def burst_reserve(
    loads: Sequence[EndpointLoad],
    sustained: Mapping[str, float],
    bursts: Mapping[str, float],
    spec: PoolSpec,
    profile: Profile,
    tuning: Tuning,
    lowest: int,
    highest: int,
) -> int:
    """The fewest replicas in [lowest, highest] at which every SLA endpoint
    - at its rate in `sustained` (req/s: the highest it sustained over the burst memory,
      `Estimate.reserve_rate`) keeps its planned queueing within its whole TTFT budget, with no
      headroom. Where `loads` carry a larger queue budget (no TTFT budget, or the scale-down
      model's budget anchored at the measurement, `pessimism_corrected`), that one. A pool
      sized for the queue budget at a quiet rate can meet a step back to that peak only with
      pods that take a start-up to come; this many serve it with a longer queue but not a
      growing one;
    - at its rate in `bursts` (its busiest burst window over the memory, `Estimate.burst_rate`)
      is served as it comes: the pods' admission (prefill) stays within `max_utilization`
      (`burst_absorbed`). A burst of a burst window builds a queue that the TTFT budget drains
      only if it is a small part of the window, and a pod asked for in the burst comes after it.
    `highest` where none does (a scale-down from `highest` to `lowest` only needs to know where
    to stop). Throughput classes are left out: they can wait."""
    at_peak = tuple(
        replace(
            load,
            arrival_rate=sustained.get(load.name, load.arrival_rate),
            queue_budget_seconds=max(load.budget_seconds or 0.0, load.queue_budget_seconds or 0.0)
            or None,
        )
        for load in loads
        if load.has_sla
    )
    if not at_peak:
        return lowest
    queueing = plan(at_peak, spec, profile, tuning, 1.0, lowest, highest).replicas
    in_bursts = tuple(
        replace(load, arrival_rate=burst_absorbed(bursts.get(load.name, 0.0), load))
        for load in at_peak
    )
    endpoints = {e.name: e for e in spec.endpoints}
    limits = most_favourable_limits(in_bursts, endpoints)
    for replicas in range(queueing, highest + 1):
        result = forecast(in_bursts, limits, replicas, profile, tuning)
        if result.admission_utilization <= tuning.max_utilization:
            return replicas
    return highest


def burst_absorbed(burst_rate: float, load: EndpointLoad) -> float:
    """The rate the pods must admit through a burst of `burst_rate` lasting a burst window, for
    the last of it to wait no longer than the TTFT budget (the arrivals of the window served
    within the window plus the budget), and at least the load's own rate."""
    allowance = load.budget_seconds or load.queue_budget_seconds or 0.0
    absorbed = burst_rate * BURST_WINDOW_SECONDS / (BURST_WINDOW_SECONDS + allowance)
    return max(load.arrival_rate, absorbed)


def limits_at(
    loads: Sequence[EndpointLoad],
    endpoints: Mapping[str, EndpointSpec],
    replicas: int,
    profile: Profile,
    tuning: Tuning,
    headroom: float,
    favourable: Mapping[str, EndpointLimits],
) -> Plan:
    """The batch limits for `replicas` replicas, per the rules in the module docstring."""

    def evaluate(limits: Mapping[str, EndpointLimits]) -> tuple[PoolForecast, bool]:
        result = forecast(loads, limits, replicas, profile, tuning)
        return result, meets_targets(result, loads, limits, profile, tuning, headroom)

    limits = dict(favourable)
    result, fits = evaluate(limits)

    shrunk: list[str] = []
    throughput_classes = [load for load in loads if not load.has_sla]
    for load in sorted(throughput_classes, key=lambda x: -x.priority):
        bounds = endpoints[load.name]
        window = bounds.batch_window_milliseconds.max
        for size in reversed(batch_size_candidates(bounds.max_batch_size)):
            trial = {**limits, load.name: EndpointLimits(size, window)}
            trial_result, trial_fits = evaluate(trial)
            if trial_fits or size == bounds.max_batch_size.min:
                limits, result, fits = trial, trial_result, trial_fits
                break
        if limits[load.name].max_batch_size < bounds.max_batch_size.max:
            shrunk.append(load.name)

    limits = _with_windows(loads, endpoints, limits, result, tuning, headroom)
    result, _ = evaluate(limits)
    return Plan(replicas, limits, result, fits, tuple(dict.fromkeys(shrunk)))


def batch_size_candidates(bounds: IntRange) -> list[int]:
    """The batch sizes worth trying: the bounds, powers of two and 1.5x powers of two."""
    values = {bounds.min, bounds.max}
    power = 1
    while power <= bounds.max:
        values.update({power, power * 3 // 2})
        power *= 2
    return sorted(v for v in values if bounds.min <= v <= bounds.max)


def most_favourable_limits(
    loads: Sequence[EndpointLoad], endpoints: Mapping[str, EndpointSpec]
) -> dict[str, EndpointLimits]:
    # SLA endpoints and throughput demand get all their slots; a backlog that would fill every
    # slot it gets is held to the fewest.
    limits = {}
    for load in loads:
        bounds = endpoints[load.name]
        size = bounds.max_batch_size.min if load.fills_slots else bounds.max_batch_size.max
        window = (
            bounds.batch_window_milliseconds.min
            if load.has_sla
            else bounds.batch_window_milliseconds.max
        )
        limits[load.name] = EndpointLimits(size, window)
    return limits


def _with_windows(
    loads: Sequence[EndpointLoad],
    endpoints: Mapping[str, EndpointSpec],
    limits: Mapping[str, EndpointLimits],
    result: PoolForecast,
    tuning: Tuning,
    headroom: float,
) -> dict[str, EndpointLimits]:
    """Give each SLA endpoint a batch window out of a share of its spare queue budget."""
    updated = dict(limits)
    for load in loads:
        if not load.has_sla:
            continue
        predicted = result.endpoints[load.name]
        window = limits[load.name].batch_window_milliseconds / 1000.0
        target = queue_target(load, predicted, headroom, window)
        spare = target - planned_queueing(predicted, 0.0)
        window_ms = (
            0
            if math.isinf(spare)
            else math.floor(1000.0 * tuning.window_share_of_spare * max(0.0, spare))
        )
        bounds = endpoints[load.name].batch_window_milliseconds
        updated[load.name] = EndpointLimits(
            limits[load.name].max_batch_size, bounds.clamp(window_ms)
        )
    return updated
