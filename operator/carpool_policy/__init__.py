"""carpool's scaling policy: pure functions of their arguments (no I/O, no clock, no kopf).

`decide(observation, spec, state, now, profile=None, tuning=DEFAULT_TUNING) -> Decision` is the
whole public surface, with the data types it reads and returns and the one profile parser.
"""

from carpool_policy.decide import decide
from carpool_policy.state import PolicyState
from carpool_policy.tuning import DEFAULT_TUNING, Tuning
from carpool_policy.types import (
    BURST_WINDOW_SECONDS,
    Condition,
    Decision,
    EndpointLimits,
    EndpointObservation,
    EndpointSpec,
    IntRange,
    Observation,
    PoolSpec,
    ScalingSpec,
    SpecError,
)
from carpool_replica.profile import Profile, ProfileError

__all__ = [
    "BURST_WINDOW_SECONDS",
    "DEFAULT_TUNING",
    "Condition",
    "Decision",
    "EndpointLimits",
    "EndpointObservation",
    "EndpointSpec",
    "IntRange",
    "Observation",
    "PolicyState",
    "PoolSpec",
    "Profile",
    "ProfileError",
    "ScalingSpec",
    "SpecError",
    "Tuning",
    "decide",
]
