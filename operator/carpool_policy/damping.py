"""Damping: turn the model's recommendation into a replica change that does not flap.

Contract: `damp(up, down, current, spec, history, now, tuning, last_scale_down_at)`:
- `up` is the count the targets need, `down` the count a tighter target would need
  (`down >= up`); the recommendation is `up` when it exceeds `current`, `down` when it is below
  `current`, and `current` in between (the hysteresis band).
- Scale-up is immediate, at most `spec.scaling.max_scale_up_step` replicas per decision.
- Scale-down takes the highest recommendation of the last stabilization window (as the
  Kubernetes HPA does), waits until the remembered history spans the whole window, and removes
  at most `max_scale_down_fraction` of the replicas (at least one) per decision, and scales
  down at most once per `scale_down_period_seconds` (counted from `last_scale_down_at`).
- The returned history holds the recommendations of the window plus the newest older one (which
  shows the history spans the window); entries from the future are dropped.
The result is not yet clamped to [min, max]; the caller does that last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from carpool_policy.tuning import Tuning
from carpool_policy.types import PoolSpec


@dataclass(frozen=True)
class Damped:
    replicas: int
    recommendation: int
    history: tuple[tuple[float, int], ...]
    note: str  # why `replicas` differs from `recommendation`; empty when it does not
    rules: tuple[str, ...] = ()  # the damping rule that held it back (explain.RULES)


def damp(
    up: int,
    down: int,
    current: int,
    spec: PoolSpec,
    history: tuple[tuple[float, int], ...],
    now: float,
    tuning: Tuning,
    last_scale_down_at: float | None = None,
) -> Damped:
    if up > current:
        recommendation = up
    elif down < current:
        recommendation = down
    else:
        recommendation = current
    window = spec.scaling.scale_down_stabilization_seconds
    kept = _window(history + ((now, recommendation),), now, window)

    if recommendation > current:
        step = spec.scaling.max_scale_up_step
        replicas = min(recommendation, current + step)
        if replicas < recommendation:
            note = f"scale-up limited to {step} per decision"
            return Damped(replicas, recommendation, kept, note, ("scale_up_step",))
        return Damped(replicas, recommendation, kept, "")
    if recommendation == current:
        return Damped(current, recommendation, kept, "")

    oldest = kept[0][0]
    if window > 0 and oldest > now - window:
        note = (
            f"scale-down to {recommendation} waits for {window} s of recommendations "
            f"(have {now - oldest:.0f} s)"
        )
        return Damped(current, recommendation, kept, note, ("stabilizing",))
    in_window = [r for t, r in kept if t >= now - window]
    stabilized = max(in_window)
    if stabilized >= current:
        note = f"stabilizing: {stabilized} recommended within the last {window} s"
        return Damped(current, recommendation, kept, note, ("stabilizing",))
    since = None if last_scale_down_at is None else now - last_scale_down_at
    if since is not None and 0 <= since < tuning.scale_down_period_seconds:
        note = (
            f"scale-down to {recommendation} paced: one step per "
            f"{tuning.scale_down_period_seconds:.0f} s (the last {since:.0f} s ago)"
        )
        return Damped(current, recommendation, kept, note, ("scale_down_step",))
    largest_step = max(1, math.floor(current * tuning.max_scale_down_fraction))
    replicas = max(stabilized, current - largest_step)
    if replicas <= recommendation:
        return Damped(replicas, recommendation, kept, "")
    bounded = replicas == current - largest_step
    note = f"scale-down to {replicas}, not {recommendation}: " + (
        f"at most {largest_step} per decision"
        if bounded
        else f"{stabilized} recommended within the last {window} s"
    )
    rule = "scale_down_step" if bounded else "stabilizing"
    return Damped(replicas, recommendation, kept, note, (rule,))


def _window(
    history: tuple[tuple[float, int], ...], now: float, window: float
) -> tuple[tuple[float, int], ...]:
    ordered = sorted((t, r) for t, r in history if t <= now)
    inside = [(t, r) for t, r in ordered if t >= now - window]
    older = [(t, r) for t, r in ordered if t < now - window]
    return tuple(older[-1:] + inside)
