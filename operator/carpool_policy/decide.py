"""`decide()`: one control step of the pool's scaling policy, as one pipeline.

Contract: `decide(observation, spec, state, now, profile=None, tuning=DEFAULT_TUNING)` is a pure
function of its arguments and never raises on an observation. Its `Decision`:
- has replicas in [spec.min_replicas, spec.max_replicas] and every endpoint's limits inside
  that endpoint's bounds, for every input;
- holds replicas and limits when metrics are unavailable, stale or empty
  (`MetricsAvailable=False`), and never scales down on a missing series;
- adds no replicas while pods are Pending for lack of GPUs (`CapacityLimited=True`), shrinking
  the lower-priority endpoints' batch share instead;
- in `Recommend` and `Manual` modes applies nothing (`recommended_replicas` and
  `recommended_limits` say what Auto would set);
- works from measured queue delay alone when `profile` is None.

The stages, one module each:

    estimate  rates, token means, measured queue delay and service time, queue budgets (estimate)
    plan      the model, its prefill priced over each endpoint's measured prompt mix and
              anchored at the measured queue delay (while pods start, at no stricter a level
              than with every pod last ready): fewest replicas + limits whose predicted
              queue delay fits (planner); the scale-down count from the model as it is, or
              anchored where the measurement contradicts it, within a tighter headroom
              (where that needs more than the step up, the pool holds at it: named
              `scale_down_headroom`) (planner)
    guard     measured queue delay decides the direction and overrides the model; where the
              model calls the ready replicas overloaded but their queue was measured finite,
              the measurement sizes the step (guard); a step up goes no further than the
              pool's recent operating points measured within budget need at the rates now
              (operating_points); with a profile, a scale-down the guard
              lets stand stops at the burst reserve, what the last hour's sustained peak rate
              and its busiest burst window need (planner), unless the pool has no traffic
    damp      fast up, stabilized down, bounded steps (damping)
    explain   conditions and a reason naming every rule that acted (explain)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

from carpool_policy.capacity import EndpointLoad, prefill_moments
from carpool_policy.damping import damp
from carpool_policy.estimate import Estimate, estimate
from carpool_policy.explain import conditions_for, metrics_problem, reason_for
from carpool_policy.guard import guard, measured_ratios, ratio_step
from carpool_policy.operating_points import (
    observed_point,
    remembered,
    settled_since,
    sla_rates,
    step_up_bound,
)
from carpool_policy.planner import (
    Anchoring,
    Plan,
    anchor,
    burst_reserve,
    limits_at,
    most_favourable_limits,
    pessimism_corrected,
    plan,
)
from carpool_policy.state import PolicyState
from carpool_policy.tuning import DEFAULT_TUNING, Tuning
from carpool_policy.types import (
    Decision,
    EndpointLimits,
    EndpointObservation,
    Observation,
    PoolSpec,
)
from carpool_replica.profile import Profile

_EMPTY = EndpointObservation()


@dataclass(frozen=True)
class Step:
    """What one decision worked out, for the explanation."""

    current: int
    ready: int
    replicas: int
    recommended: int
    needed: int  # what the model and the guard need before damping, uncapped by max
    estimates: Mapping[str, Estimate]
    rules: tuple[str, ...]  # every rule that changed the outcome, in the order they acted
    damping_note: str
    plan: Plan | None
    capacity_limited: bool
    anchors: Mapping[str, tuple[float, float]]  # endpoint: (model's queue delay, measured)
    # Endpoints anchored at the level of the last time every pod was ready (pods starting).
    held_anchors: tuple[str, ...] = ()
    reserve: int | None = None  # the burst reserve where it stopped a scale-down
    # The scale-down model's count where it, not the scale-up model, set the pool's size.
    held_for_headroom: int | None = None
    # (bound, the step up it held) where the pool's recent operating points held the step up.
    operating_bound: tuple[int, int] | None = None

    @property
    def loads(self) -> tuple[EndpointLoad, ...]:
        return tuple(e.load for e in self.estimates.values())

    @property
    def missing_rates(self) -> tuple[str, ...]:
        return tuple(name for name, e in self.estimates.items() if e.rate_missing)

    @property
    def unreachable(self) -> tuple[str, ...]:
        return tuple(name for name, e in self.estimates.items() if e.unreachable)


def decide(
    observation: Observation,
    spec: PoolSpec,
    state: PolicyState,
    now: float,
    profile: Profile | None = None,
    tuning: Tuning = DEFAULT_TUNING,
) -> Decision:
    """Choose replicas and batch limits for one pool at time `now` (Unix seconds)."""
    current = max(0, observation.desired_replicas)
    held = held_limits(observation, spec)
    problem = metrics_problem(observation, spec, now, tuning)
    if problem is not None:
        return _hold(observation, spec, state, current, held, problem)

    estimates = _estimate(observation, spec, state, now, tuning)
    loads = tuple(e.load for e in estimates.values())
    if profile is not None:
        loads = _priced(loads, estimates, profile)
    busy = any(load.arrival_rate > 0 or load.backlogged for load in loads)
    lowest = max(spec.min_replicas, 1 if busy else 0)
    anchoring = Anchoring(loads, {}, {})
    anchor_held = False  # the held anchor kept the model from a larger step up
    settled = observation.ready_replicas >= current
    pessimistic = False  # the scale-down model took the anchored level somewhere
    down_loads = loads
    if profile is not None:
        # The step up is sized by the model anchored at the measured queue delay; the step down
        # by the model as it is, whose level errs on the side of capacity (a quiet minute is
        # weak evidence that fewer replicas would hold the next burst), except for endpoints
        # where that level is contradicted (`model_pessimistic`).
        unanchored = loads
        measured = _measured(estimates, tuning)
        ready = observation.ready_replicas
        held_scales = {} if settled else _held_scales(state, now, tuning)
        anchoring = anchor(loads, measured, held, ready, profile, tuning, held_scales)
        loads = anchoring.loads
        highest = spec.max_replicas
        up_plan = plan(loads, spec, profile, tuning, tuning.budget_headroom, lowest, highest)
        if anchoring.held:
            fresh = anchor(unanchored, measured, held, ready, profile, tuning).loads
            fresh_up = plan(fresh, spec, profile, tuning, tuning.budget_headroom, lowest, highest)
            anchor_held = fresh_up.replicas > max(up_plan.replicas, current)
        down_loads = pessimism_corrected(unanchored, loads, anchoring.anchors, tuning)
        up, down = _model_counts(up_plan, down_loads, spec, profile, tuning, current, lowest)
        pessimistic = down_loads != unanchored and down < current
    else:
        up_plan = None
        up, down = _measured_counts(estimates, observation, current, lowest, tuning)
    unbounded = any(math.isinf(predicted) for predicted, _ in anchoring.anchors.values())
    # What the pool's own recent operating points say a step up needs at the rates now.
    points = remembered(state.operating_points, now, tuning)
    measured_bound = step_up_bound(points, sla_rates(estimates, observation), current)
    changed_at = max(
        (t for t in (state.last_scale_up_at, state.last_scale_down_at) if t is not None),
        default=None,
    )
    settled_at = settled_since(state.settled_since, current, observation, changed_at, now)
    point = observed_point(current, estimates, observation, now, settled_at, tuning)
    if point is not None:
        points += (point,)
    guarded = guard(up, down, current, estimates, observation, tuning, unbounded, measured_bound)
    # An idle pool keeps no reserve: `replicas.min` (0 allows scale-to-zero) says what a pool
    # without traffic should hold, and an hour-old peak does not.
    reserve = None
    if profile is not None and busy and guarded.down < current:
        sustained = {name: e.reserve_rate for name, e in estimates.items()}
        bursts = {name: e.burst_rate for name, e in estimates.items()}
        reserve = burst_reserve(
            down_loads, sustained, bursts, spec, profile, tuning, guarded.down, current
        )
        if reserve > guarded.down:
            guarded = replace(guarded, down=reserve)
        else:
            reserve = None  # the scale-down stands as the guard let it
    # Where the measurement sized the step, the model's verdicts (the pool falls short, the
    # limits it would set for pods it calls overloaded) rest on a prediction it contradicts.
    model_trusted = "model_unbounded" not in guarded.rules
    needed = guarded.up
    if up_plan is not None and not up_plan.fits and model_trusted:
        needed = max(needed, spec.max_replicas + 1)

    damped = damp(
        guarded.up,
        guarded.down,
        current,
        spec,
        state.recommendations,
        now,
        tuning,
        state.last_scale_down_at,
    )
    # The reserve is named where the pool stopped at it, not where damping stopped the pool
    # short of it; the pessimism correction only where the scale-down it sized stood.
    reserved = reserve is not None and damped.replicas == min(current, reserve)
    rules = ["model_pessimistic"] if pessimistic and guarded.down < current and not reserved else []
    if anchor_held:
        rules.append("anchor_held")
    rules += list(guarded.rules)
    if reserved:
        rules.append("burst_reserve")
    # The tighter headroom of the scale-down model held the pool above what the step up needs:
    # a hysteresis that changed the outcome, so it is named with its count.
    # (`down` is the scale-down model's count where there is a profile.)
    held_for_headroom = None
    from_model = profile is not None and up < down == guarded.down and not reserved
    if from_model and guarded.up < damped.replicas == min(current, down):
        held_for_headroom = down
        rules.append("scale_down_headroom")
    rules += list(damped.rules)
    replicas = damped.replicas
    capacity_limited = observation.pending_unschedulable_replicas > 0
    if capacity_limited and replicas > current:
        replicas = current  # more pods would not schedule either
        rules.append("capacity_limited")
    if replicas > spec.max_replicas:
        rules.append("max_replicas")
    replicas = spec.replicas.clamp(replicas)
    recommended = spec.replicas.clamp(damped.recommendation)

    limits, predicted, chosen_plan = _limits(
        observation, spec, loads, replicas, capacity_limited, profile, tuning, held, up_plan
    )
    if not model_trusted:
        limits = dict(held)
    if replicas >= spec.max_replicas or capacity_limited:
        limits = _protect_breached(limits, spec, guarded.breached)
    limits = _settled(limits, held, spec)
    if any(e.unreachable for e in estimates.values()):
        rules.append("sla_unreachable")
    recommended_limits = limits
    if spec.scaling.mode != "Auto":
        replicas, limits = spec.replicas.clamp(current), held
        rules.append("not_auto")
    step = Step(
        current=current,
        ready=observation.ready_replicas,
        replicas=replicas,
        recommended=recommended,
        needed=needed,
        estimates=estimates,
        rules=tuple(dict.fromkeys(rules)),
        damping_note=damped.note,
        plan=chosen_plan,
        capacity_limited=capacity_limited,
        anchors=anchoring.anchors,
        held_anchors=anchoring.held,
        reserve=reserve if reserved else None,
        held_for_headroom=held_for_headroom,
        operating_bound=(
            None if guarded.bounded_from is None else (guarded.up, guarded.bounded_from)
        ),
    )
    new_state = PolicyState(
        recommendations=damped.history,
        last_scale_up_at=now if replicas > current else state.last_scale_up_at,
        last_scale_down_at=now if replicas < current else state.last_scale_down_at,
        last_observed_at=now,
        service_times={n: e.service_history for n, e in estimates.items() if e.service_history},
        token_means={load.name: (load.prompt_tokens, load.generated_tokens) for load in loads},
        sustained_rates={
            n: e.sustained_history for n, e in estimates.items() if e.sustained_history
        },
        peak_rates={n: e.peak_history for n, e in estimates.items() if e.peak_history},
        operating_points=points,
        settled_since=settled_at,
        anchor_scales=(
            {n: (now, scale) for n, scale in anchoring.scales.items()}
            if settled
            else state.anchor_scales
        ),
    )
    return Decision(
        replicas=replicas,
        limits=limits,
        conditions=conditions_for(spec, observation, None, step),
        reason=reason_for(spec, step, recommended_limits, held, tuning),
        changed=_changed(observation, replicas, limits),
        state=new_state,
        recommended_replicas=recommended,
        predicted_ttft_p95_seconds=predicted,
        recommended_limits=recommended_limits,
        rules=step.rules,
        queue_budget_seconds={n: e.queue_budget for n, e in estimates.items() if e.load.has_sla},
        needed_replicas=needed,
    )


def _hold(observation, spec, state, current, held, problem) -> Decision:
    """Metrics cannot be acted on: hold replicas and the limits in force, and say why."""
    replicas = spec.replicas.clamp(current)
    return Decision(
        replicas=replicas,
        limits=held,
        conditions=conditions_for(spec, observation, problem, None),
        reason=f"holding {replicas} replicas and the limits in force: {problem[1]}",
        changed=_changed(observation, replicas, held),
        state=state,
        recommended_replicas=replicas,
        predicted_ttft_p95_seconds={e.name: None for e in spec.endpoints},
        recommended_limits=held,
        rules=("metrics_unavailable",),
    )


def _estimate(observation, spec, state, now, tuning) -> dict[str, Estimate]:
    return {
        e.name: estimate(
            e,
            observation.endpoints.get(e.name) or _EMPTY,
            state.token_means.get(e.name),
            state.service_times.get(e.name, ()),
            now,
            tuning,
            state.sustained_rates.get(e.name, ()),
            state.peak_rates.get(e.name, ()),
        )
        for e in spec.endpoints
    }


def _priced(
    loads: tuple[EndpointLoad, ...], estimates: Mapping[str, Estimate], profile: Profile
) -> tuple[EndpointLoad, ...]:
    """Each load with its prefill priced over its measured prompt mix (where one was measured)."""
    priced = []
    for load in loads:
        moments = prefill_moments(profile, estimates[load.name].prompt_mix)
        if moments is not None:
            load = replace(load, prefill_seconds=moments[0], prefill_scv=moments[1])
        priced.append(load)
    return tuple(priced)


def _measured(estimates: Mapping[str, Estimate], tuning: Tuning) -> dict[str, float]:
    """The queue delays measured with enough traffic to trust their p95."""
    return {
        name: e.queue_delay_p95
        for name, e in estimates.items()
        if e.queue_delay_p95 is not None and e.observed_rate >= tuning.min_feedback_rate
    }


def _held_scales(state: PolicyState, now: float, tuning: Tuning) -> dict[str, float]:
    """The anchor scales of the last time every pod was ready, where recent enough to hold."""
    return {
        name: scale
        for name, (at, scale) in state.anchor_scales.items()
        if now - at <= tuning.anchor_hold_seconds
    }


def _model_counts(up_plan, loads, spec, profile, tuning, current, lowest) -> tuple[int, int]:
    """The (anchored) model's scale-up count, and the count the scale-down model (`loads`,
    from `planner.pessimism_corrected`) needs at the tighter scale-down headroom."""
    up = up_plan.replicas if up_plan.fits else spec.max_replicas
    if up >= current:
        return up, up
    down_plan = plan(
        loads, spec, profile, tuning, tuning.scale_down_headroom, lowest, spec.max_replicas
    )
    return up, max(up, down_plan.replicas)


def _measured_counts(estimates, observation, current, lowest, tuning) -> tuple[int, int]:
    """Without a profile: HPA's ratio rule on the measured queue delay over its budget (the
    guard's `measured_ratio`), up at `budget_headroom`, down at `scale_down_headroom`."""
    ratios = measured_ratios(estimates, observation)
    if ratios is None:
        return current, current  # traffic but no latency yet: hold
    if not ratios:
        idle = all(
            e.observed_rate == 0 and not e.rate_missing and not e.load.backlogged
            for e in estimates.values()
        )
        return (lowest, lowest) if idle else (current, current)
    worst = max(ratios.values())
    up = ratio_step(worst, observation, current, tuning) if worst > tuning.budget_headroom else 0
    down = max(lowest, math.ceil(max(current, 1) * worst / tuning.scale_down_headroom))
    return max(up, lowest), down


def held_limits(observation: Observation, spec: PoolSpec) -> dict[str, EndpointLimits]:
    """The limits in force, clamped into the spec's bounds; the bounds' defaults where unknown
    (the largest batch, the shortest window for SLA endpoints and the longest for the rest)."""
    limits = {}
    for e in spec.endpoints:
        in_force = observation.limits.get(e.name)
        default_window = (
            e.batch_window_milliseconds.min if e.has_sla else e.batch_window_milliseconds.max
        )
        size = in_force.max_batch_size if in_force else e.max_batch_size.max
        window = in_force.batch_window_milliseconds if in_force else default_window
        limits[e.name] = EndpointLimits(
            e.max_batch_size.clamp(size), e.batch_window_milliseconds.clamp(window)
        )
    return limits


def _limits(observation, spec, loads, replicas, capacity_limited, profile, tuning, held, up_plan):
    if profile is None:
        predicted = {e.name: None for e in spec.endpoints}
        if not capacity_limited:
            return held, predicted, None
        # No model: protect the SLA endpoints by giving throughput classes their least share.
        shrunk = {
            e.name: EndpointLimits(e.max_batch_size.min, held[e.name].batch_window_milliseconds)
            if not e.has_sla
            else held[e.name]
            for e in spec.endpoints
        }
        return shrunk, predicted, None
    # Size the limits for the pods that serve now: new pods are not ready yet.
    serving = (
        replicas if observation.ready_replicas <= 0 else min(replicas, observation.ready_replicas)
    )
    endpoints = {e.name: e for e in spec.endpoints}
    if up_plan is not None and up_plan.replicas == serving:
        chosen = up_plan
    else:
        favourable = most_favourable_limits(loads, endpoints)
        chosen = limits_at(
            loads, endpoints, serving, profile, tuning, tuning.budget_headroom, favourable
        )
    predicted = {
        name: (None if math.isinf(f.ttft_p95_seconds) else f.ttft_p95_seconds)
        for name, f in chosen.forecast.endpoints.items()
    }
    return dict(chosen.limits), predicted, chosen


def _protect_breached(
    limits: Mapping[str, EndpointLimits], spec: PoolSpec, breached: tuple[str, ...]
) -> dict[str, EndpointLimits]:
    """When the pool cannot grow, give way to the endpoints measured over their queue budget:
    every endpoint of lower priority drops to its smallest batch and shortest window, whatever
    the model predicted (the measurement wins over a model that may be optimistic)."""
    if not breached:
        return dict(limits)
    protected = max(e.priority for e in spec.endpoints if e.name in breached)
    return {
        e.name: EndpointLimits(e.max_batch_size.min, e.batch_window_milliseconds.min)
        if e.priority < protected
        else limits[e.name]
        for e in spec.endpoints
    }


def _settled(
    limits: dict[str, EndpointLimits], held: dict[str, EndpointLimits], spec: PoolSpec
) -> dict[str, EndpointLimits]:
    """Keep the limits in force unless the change matters (each retune costs a push to every
    pod and an Event). A change that protects latency applies at once: more slots for an SLA
    endpoint, fewer for a throughput class. The opposite direction waits until the batch size
    would halve (SLA endpoint) or grow by half (throughput class); windows move by >= 25%."""
    settled = {}
    for e in spec.endpoints:
        new, old = limits[e.name], held[e.name]
        grows = new.max_batch_size > old.max_batch_size
        if e.has_sla:
            size_moves = grows or new.max_batch_size * 2 <= old.max_batch_size
        else:
            size_moves = not grows and new.max_batch_size != old.max_batch_size
            size_moves = size_moves or new.max_batch_size * 2 >= old.max_batch_size * 3
        window_moves = abs(new.batch_window_milliseconds - old.batch_window_milliseconds) >= max(
            2.0, 0.25 * old.batch_window_milliseconds
        )
        settled[e.name] = EndpointLimits(
            new.max_batch_size if size_moves else old.max_batch_size,
            new.batch_window_milliseconds if window_moves else old.batch_window_milliseconds,
        )
    return settled


def _changed(observation: Observation, replicas: int, limits) -> bool:
    return replicas != observation.desired_replicas or any(
        observation.limits.get(name) != value for name, value in limits.items()
    )
