"""The policy's inputs and outputs: plain, frozen data with no behaviour beyond parsing.

Contract:
- `PoolSpec.from_crd(spec)` parses an InferencePool `spec` dict (carpool.dev/v1alpha1) and
  applies the same defaults as the CRD schema; it raises `SpecError` naming the bad field.
- `Observation` is what the operator reads from Prometheus and the API server for one pool at one
  instant. A series that is missing is `None`, never zero.
- `Decision` is what `decide()` returns: replicas, per-endpoint limits, conditions, a reason with
  numbers, the predicted p95 TTFT per endpoint, and the `PolicyState` for the next call.
- Times are seconds (floats, Unix epoch for instants) unless a name says milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from carpool_policy.state import PolicyState

# The short window of `EndpointObservation.burst_arrival_rate_per_second`: the control interval's
# default. Longer than any TTFT budget can queue, so a burst that lasts it must be served as it
# comes (`planner.burst_reserve`); short enough that a Prometheus scraping the workers every
# 5 s still holds samples in it.
BURST_WINDOW_SECONDS = 15.0


class SpecError(ValueError):
    """An InferencePool spec that cannot be parsed; the message names the field."""


@dataclass(frozen=True)
class IntRange:
    """An inclusive integer range from the spec, e.g. `maxBatchSize: {min: 1, max: 16}`."""

    min: int
    max: int

    def clamp(self, value: int) -> int:
        return max(self.min, min(self.max, value))


@dataclass(frozen=True)
class EndpointSpec:
    name: str
    priority: int = 0
    default: bool = False
    # p95 time-to-first-token budget and p95 queue-wait budget (arrival to prefill start); with
    # neither the endpoint is a throughput class. With only a TTFT budget the queue budget is
    # the TTFT budget less the measured service time (see carpool_policy.estimate).
    ttft_p95_seconds: float | None = None
    queue_wait_p95_seconds: float | None = None
    max_batch_size: IntRange = IntRange(1, 16)
    batch_window_milliseconds: IntRange = IntRange(0, 0)
    max_queue_wait_milliseconds: int = 2000
    max_queue_length: int = 256

    @property
    def has_sla(self) -> bool:
        return self.ttft_p95_seconds is not None or self.queue_wait_p95_seconds is not None


@dataclass(frozen=True)
class ScalingSpec:
    mode: str = "Auto"  # Auto | Recommend | Manual
    interval_seconds: int = 15
    scale_down_stabilization_seconds: int = 300
    max_scale_up_step: int = 4
    on_metrics_unavailable: str = "Hold"
    profile_config_map: str = ""


@dataclass(frozen=True)
class PoolSpec:
    min_replicas: int
    max_replicas: int
    endpoints: tuple[EndpointSpec, ...]
    scaling: ScalingSpec = ScalingSpec()

    @property
    def replicas(self) -> IntRange:
        return IntRange(self.min_replicas, self.max_replicas)

    def endpoints_by_priority(self) -> tuple[EndpointSpec, ...]:
        """Highest priority first; ties keep the spec's order."""
        return tuple(sorted(self.endpoints, key=lambda e: -e.priority))

    @classmethod
    def from_crd(cls, spec: Mapping[str, Any]) -> PoolSpec:
        from carpool_policy.spec_parsing import pool_spec_from_crd

        return pool_spec_from_crd(spec)


@dataclass(frozen=True)
class EndpointLimits:
    """The batch limits of one endpoint in force on the workers (the limits document's fields)."""

    max_batch_size: int
    batch_window_milliseconds: int

    def to_dict(self) -> dict[str, int]:
        return {
            "maxBatchSize": self.max_batch_size,
            "batchWindowMilliseconds": self.batch_window_milliseconds,
        }


@dataclass(frozen=True)
class EndpointObservation:
    """One endpoint's recent traffic, summed or averaged over all the pool's pods.

    Rates and means are over the operator's rate window (e.g. `rate(...[1m])`); p95s from the
    histograms over the same window. Each field is None when its series is missing.
    """

    arrival_rate_per_second: float | None = None
    # The same arrivals over the last `BURST_WINDOW_SECONDS` only: a burst that a minute's
    # mean dilutes.
    burst_arrival_rate_per_second: float | None = None
    mean_prompt_tokens: float | None = None
    mean_generated_tokens: float | None = None
    # arrival to the step that begins the prefill: what replicas and limits change
    queue_wait_p95_seconds: float | None = None
    # that step to the first token (the request's own prefill): what they do not change
    service_time_p95_seconds: float | None = None
    ttft_p95_seconds: float | None = None
    waiting: float | None = None  # carpool_requests_waiting, summed over pods
    running: float | None = None  # carpool_requests_running, summed over pods
    rejected_rate_per_second: float | None = None
    # Prompt lengths of the requests whose prefill started: (bucket upper bound in tokens,
    # requests per second in that bucket), math.inf last (carpool_prompt_length_tokens).
    prompt_length_buckets: tuple[tuple[float, float], ...] | None = None


@dataclass(frozen=True)
class Observation:
    """One pool at one instant: metrics plus what the API server says about its pods.

    `available` is False when Prometheus could not be queried at all; `sampled_at` is the
    timestamp of the newest sample (None when there is none), used to detect stale data.
    """

    sampled_at: float | None
    available: bool
    desired_replicas: int  # the Deployment's spec.replicas now
    ready_replicas: int
    pending_unschedulable_replicas: int = 0  # Pending with reason Unschedulable (no GPU)
    endpoints: Mapping[str, EndpointObservation] = field(default_factory=dict)
    limits: Mapping[str, EndpointLimits] = field(default_factory=dict)  # in force now
    unavailable_reason: str = ""  # why `available` is False, for the condition message


@dataclass(frozen=True)
class Condition:
    """A status condition per the Kubernetes API conventions (the operator adds the times)."""

    type: str  # MetricsAvailable | SLAMet | SLAReachable | CapacityLimited
    status: str  # "True" | "False" | "Unknown"
    reason: str  # CamelCase
    message: str

    def to_dict(self) -> dict[str, str]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
        }


@dataclass(frozen=True)
class Decision:
    """What to apply. `replicas`/`limits` are what the operator sets (in Recommend and Manual
    modes they hold the current values); `recommended_replicas` and `recommended_limits` are
    what the policy would set in Auto. `changed` is True when replicas or any limit differ from
    the observation's, so the operator emits an Event only then, with `reason` as its message.
    `rules` names, from a fixed vocabulary (`carpool_policy.explain.RULES`), every rule that
    changed the outcome, in the order they acted.
    """

    replicas: int
    limits: Mapping[str, EndpointLimits]
    conditions: tuple[Condition, ...]
    reason: str
    changed: bool
    state: PolicyState
    recommended_replicas: int
    predicted_ttft_p95_seconds: Mapping[str, float | None] = field(default_factory=dict)
    recommended_limits: Mapping[str, EndpointLimits] = field(default_factory=dict)
    rules: tuple[str, ...] = ()
    # Each SLA endpoint's queue budget (seconds) the measured queue delay was judged against;
    # None until known (a TTFT budget alone waits for a service-time measurement).
    queue_budget_seconds: Mapping[str, float | None] = field(default_factory=dict)
    # What the model (or, where it is contradicted, the measured ratio) and the guard need
    # before damping, uncapped: above the spec's maximum where even that falls short. The
    # reason says it in words; None when the metrics could not be acted on.
    needed_replicas: int | None = None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


__all__ = [
    "BURST_WINDOW_SECONDS",
    "Condition",
    "Decision",
    "EndpointLimits",
    "EndpointObservation",
    "EndpointSpec",
    "IntRange",
    "Observation",
    "PolicyState",
    "PoolSpec",
    "ScalingSpec",
    "SpecError",
]
