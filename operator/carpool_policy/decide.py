"""`decide()`: one control step of the pool's scaling policy.

Contract: `decide(observation, spec, state, now, profile=None, tuning=DEFAULT_TUNING)` is a pure
function of its arguments. It returns a `Decision` whose replicas lie in
[spec.min_replicas, spec.max_replicas] and whose every endpoint limit lies inside that endpoint's
spec bounds. Missing or stale metrics hold the current replicas and limits. Without a profile
the policy works from feedback alone.
"""

from __future__ import annotations

from carpool_policy.profile import Profile
from carpool_policy.state import PolicyState
from carpool_policy.tuning import DEFAULT_TUNING, Tuning
from carpool_policy.types import (
    Condition,
    Decision,
    EndpointLimits,
    Observation,
    PoolSpec,
)


def decide(
    observation: Observation,
    spec: PoolSpec,
    state: PolicyState,
    now: float,
    profile: Profile | None = None,
    tuning: Tuning = DEFAULT_TUNING,
) -> Decision:
    """Choose replicas and batch limits for one pool at time `now` (Unix seconds)."""
    replicas = spec.replicas.clamp(observation.desired_replicas)
    limits = {
        e.name: EndpointLimits(
            max_batch_size=e.max_batch_size.clamp(
                getattr(observation.limits.get(e.name), "max_batch_size", e.max_batch_size.max)
            ),
            batch_window_milliseconds=e.batch_window_milliseconds.clamp(
                getattr(
                    observation.limits.get(e.name),
                    "batch_window_milliseconds",
                    e.batch_window_milliseconds.min,
                )
            ),
        )
        for e in spec.endpoints
    }
    return Decision(
        replicas=replicas,
        limits=limits,
        conditions=(Condition("MetricsAvailable", "Unknown", "NotEvaluated", "holding"),),
        reason=f"holding {replicas} replicas",
        changed=replicas != observation.desired_replicas
        or any(observation.limits.get(n) != lim for n, lim in limits.items()),
        state=state,
        recommended_replicas=replicas,
        predicted_ttft_p95_seconds={e.name: None for e in spec.endpoints},
    )
