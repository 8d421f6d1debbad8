"""`decide()`: one control step of the pool's scaling policy.

Contract: `decide(observation, spec, state, now, profile=None, tuning=DEFAULT_TUNING)` is a pure
function of its arguments and never raises on an observation. Its `Decision`:
- has replicas in [spec.min_replicas, spec.max_replicas] and every endpoint's limits inside
  that endpoint's bounds, for every input;
- holds replicas and limits when metrics are unavailable, stale or empty
  (`MetricsAvailable=False`), and never scales down while any endpoint's arrival rate is missing;
- adds no replicas while pods are Pending for lack of GPUs (`CapacityLimited=True`), shrinking
  the lower-priority endpoints' batch share instead;
- in `Recommend` and `Manual` modes applies nothing (`recommended_replicas` says what Auto would);
- works from feedback alone (measured p95 TTFT against the budget) when `profile` is None.
The steps: signals (feedback) -> plan (planner) -> damping -> safety -> explanation (explain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from carpool_policy.capacity import EndpointLoad, forecast
from carpool_policy.damping import damp
from carpool_policy.explain import conditions_for, metrics_problem, reason_for, stale_after
from carpool_policy.feedback import (
    planned_load,
    protect_missing_endpoints,
    updated_correction,
    violation_floor,
)
from carpool_policy.learned import learned_floor, record_breaches
from carpool_policy.planner import Plan, limits_at, most_favourable_limits, plan
from carpool_replica.profile import Profile
from carpool_policy.state import PolicyState
from carpool_policy.tuning import DEFAULT_TUNING, Tuning
from carpool_policy.types import (
    Decision,
    EndpointLimits,
    EndpointObservation,
    Observation,
    PoolSpec,
)

_EMPTY = EndpointObservation()


@dataclass(frozen=True)
class Step:
    """What one decision worked out, for the explanation."""

    current: int
    replicas: int
    recommended: int
    needed: int  # what the targets need before damping, uncapped by max
    loads: tuple[EndpointLoad, ...]
    observed_rates: dict[str, float]
    damping_note: str
    plan: Plan | None
    capacity_limited: bool
    missing_rates: tuple[str, ...]


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
        )

    corrections = dict(state.corrections)
    if profile is not None:
        corrections.update(_learned_corrections(observation, spec, state, profile, tuning))
    elapsed = None if state.last_observed_at is None else now - state.last_observed_at
    fresh_history = elapsed is not None and 0 < elapsed <= stale_after(spec, tuning)
    signals = {
        e.name: planned_load(
            e,
            observation.endpoints.get(e.name) or _EMPTY,
            state.arrival_rates.get(e.name) if fresh_history else None,
            elapsed if fresh_history else None,
            state.token_means.get(e.name),
            corrections.get(e.name, 1.0),
            tuning,
        )
        for e in spec.endpoints
    }
    loads = tuple(s.load for s in signals.values())
    missing = tuple(
        e.name
        for e in spec.endpoints
        if (observation.endpoints.get(e.name) or _EMPTY).arrival_rate_per_second is None
    )
    busy = any(load.arrival_rate > 0 or load.backlogged for load in loads)
    lowest = max(spec.min_replicas, 1 if busy else 0)

    up_plan: Plan | None = None
    if profile is not None:
        up_plan = plan(
            loads, spec, profile, tuning, tuning.budget_headroom, lowest, spec.max_replicas
        )
        needed = up_plan.replicas if up_plan.fits else spec.max_replicas + 1
        up = up_plan.replicas
        down = up
        if up < current:
            down_plan = plan(
                loads, spec, profile, tuning, tuning.scale_down_headroom, lowest, spec.max_replicas
            )
            down = max(up, down_plan.replicas)
    else:
        up, down = _feedback_only(observation, spec, current, lowest, tuning)
        needed = up
    if observation.ready_replicas >= current:  # pods still starting are not a measured miss
        floor = max(
            (
                violation_floor(e, observation.endpoints.get(e.name) or _EMPTY, current, tuning)
                for e in spec.endpoints
            ),
            default=0,
        )
        up, down, needed = max(up, floor), max(down, floor), max(needed, floor)
    breaches = record_breaches(state.breaches, observation, spec, now, tuning.breach_memory_seconds)
    # Never scale down onto a per-replica load that was measured to miss the SLA.
    down = max(down, min(current, learned_floor(breaches, observation, spec, tuning.breach_margin)))
    if missing:  # a missing series is never read as zero: no scale-down
        down = max(down, current)

    damped = damp(up, down, current, spec, state.recommendations, now, tuning)
    replicas = damped.replicas
    capacity_limited = observation.pending_unschedulable_replicas > 0
    if capacity_limited:
        replicas = min(replicas, current)  # more pods would not schedule either
    replicas = spec.replicas.clamp(replicas)
    recommended = spec.replicas.clamp(damped.recommendation)

    limits, predicted, chosen_plan = _limits(
        observation, spec, loads, replicas, capacity_limited, profile, tuning, held, up_plan
    )
    if replicas >= spec.max_replicas or capacity_limited:
        limits = protect_missing_endpoints(limits, spec, observation, tuning)
    limits = _settled(limits, held, spec)
    if spec.scaling.mode != "Auto":
        replicas, limits = spec.replicas.clamp(current), held
    step = Step(
        current=current,
        replicas=replicas,
        recommended=recommended,
        needed=needed,
        loads=loads,
        observed_rates={n: s.observed_rate for n, s in signals.items()},
        damping_note=damped.note,
        plan=chosen_plan,
        capacity_limited=capacity_limited,
        missing_rates=missing,
    )
    new_state = PolicyState(
        recommendations=damped.history,
        last_scale_up_at=now if replicas > current else state.last_scale_up_at,
        last_scale_down_at=now if replicas < current else state.last_scale_down_at,
        last_observed_at=now,
        arrival_rates={n: s.observed_rate for n, s in signals.items()},
        corrections=corrections,
        token_means={load.name: (load.prompt_tokens, load.generated_tokens) for load in loads},
        breaches=breaches,
    )
    return Decision(
        replicas=replicas,
        limits=limits,
        conditions=conditions_for(spec, observation, None, step),
        reason=reason_for(spec, step, limits, held, tuning),
        changed=_changed(observation, replicas, limits),
        state=new_state,
        recommended_replicas=recommended,
        predicted_ttft_p95_seconds=predicted,
    )


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


def _learned_corrections(observation, spec, state, profile, tuning) -> dict[str, float]:
    """Update each SLA endpoint's correction from a steady interval: measured p95 TTFT against
    the model's p95 for the replicas, limits and traffic that produced it."""
    ready = observation.ready_replicas
    if ready <= 0 or ready < observation.desired_replicas or not observation.limits:
        return {}
    held = held_limits(observation, spec)
    loads = []
    for e in spec.endpoints:
        seen = observation.endpoints.get(e.name) or _EMPTY
        signal = planned_load(e, seen, None, None, state.token_means.get(e.name), 1.0, tuning)
        loads.append(signal.load)
    result = forecast(loads, held, ready, profile, tuning)
    updated = {}
    for e in spec.endpoints:
        seen = observation.endpoints.get(e.name) or _EMPTY
        rate = seen.arrival_rate_per_second or 0.0
        if not e.has_sla or seen.ttft_p95_seconds is None or rate < tuning.min_feedback_rate:
            continue
        updated[e.name] = updated_correction(
            state.corrections.get(e.name, 1.0),
            seen.ttft_p95_seconds,
            result.endpoints[e.name].ttft_p95_seconds,
            result.endpoints[e.name].floor_p95_seconds,
            tuning,
        )
    return updated


def _feedback_only(observation, spec, current, lowest, tuning) -> tuple[int, int]:
    """Without a profile: HPA's ratio rule on measured p95 TTFT over the planned budget."""
    ratios = []
    for e in spec.endpoints:
        seen = observation.endpoints.get(e.name) or _EMPTY
        if not e.has_sla or (seen.arrival_rate_per_second or 0.0) <= 0:
            continue
        if seen.ttft_p95_seconds is None:
            return current, current  # traffic but no latency yet: hold
        ratios.append(seen.ttft_p95_seconds / e.ttft_p95_seconds)
    if not ratios:
        idle = all(
            (seen := observation.endpoints.get(e.name) or _EMPTY).arrival_rate_per_second == 0
            and not (seen.waiting or 0)
            for e in spec.endpoints
        )
        return (lowest, lowest) if idle else (current, current)
    worst = max(ratios)
    base = max(current, 1)
    up = math.ceil(base * worst / tuning.budget_headroom) if worst > tuning.budget_headroom else 0
    down = max(lowest, math.ceil(base * worst / tuning.scale_down_headroom))
    return max(up, lowest), down


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
