"""The scaling controllers compared by `carpool sim`: carpool's policy and the baselines.

Contract: a controller is called every `interval_seconds` with a `ControlView` (what it could
see at that instant) and returns an `Action`: the replicas it wants and, for carpool only, new
per-endpoint limits. Every controller gets the same replica bounds and starts the run with the
same replicas (`Bounds.initial`). The baselines follow their
documented control laws with their documented defaults:

- `hpa-gpu`: Kubernetes HPA on the GPU utilization gauge (DCGM_FI_DEV_GPU_UTIL via Prometheus),
  target 70%, tolerance 10%, 15 s sync, scale-up at most max(4 pods, 100%) per 15 s, scale-down
  stabilization 300 s. A starting pod's GPU reports (near) 0% while the model loads.
- `keda-queue`: KEDA's Prometheus scaler on `sum(carpool_requests_waiting)`, metricType
  AverageValue (desired = ceil(total / threshold)), through the same HPA behaviour.
- `kpa`: Knative's KPA on in-flight requests per pod: target 100 x 70% utilization, 60 s stable
  and 6 s panic windows, panic at 200%, 2 s ticks, no scale-down while panicking, scale-down at
  most 2x per tick.
- `static`: a fixed replica count (peak provisioning), held all run.
- `clairvoyant` (`Scripted`): a replica schedule known in advance (one count per period, e.g.
  per minute), each count asked for `lead_seconds` (the pod start-up) ahead, so the pods are
  ready when their period starts; it reads no metric.
- `carpool`: `carpool_policy.decide()` on an Observation built from the simulated Prometheus.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from carpool_policy import EndpointLimits, PolicyState, PoolSpec, Profile, decide
from carpool_sim.prometheus import Prometheus, observation

# The policy reads `now` as Unix seconds; the run's clock starts here.
EPOCH = 1_700_000_000.0


@dataclass
class ControlView:
    now: float
    desired_replicas: int
    ready_replicas: int
    pods: int  # created and not yet told to stop: starting + ready
    prometheus: Prometheus
    limits: dict[str, EndpointLimits]
    # (time, in-flight requests summed over ready pods), one a second: what queue-proxies report.
    concurrency: deque[tuple[float, float]] = field(default_factory=deque)


@dataclass(frozen=True)
class Action:
    replicas: int
    limits: dict[str, EndpointLimits] | None = None
    reason: str = ""


class Controller(Protocol):
    name: str
    interval_seconds: float

    def initial_replicas(self) -> int: ...
    def control(self, view: ControlView) -> Action: ...


@dataclass
class Bounds:
    """The pool's replica bounds, and the replicas every autoscaler starts the run with."""

    min: int
    max: int
    initial: int = 1

    def clamp(self, n: int) -> int:
        return max(self.min, min(self.max, n))


class HpaBehaviour:
    """The HPA's defaults around a raw recommendation: tolerance, rate limits, stabilization."""

    def __init__(self, bounds: Bounds, stabilization_seconds: float = 300.0):
        self.bounds = bounds
        self.stabilization_seconds = stabilization_seconds
        # A warm pool: the HPA has been recommending the initial replicas until the run starts.
        self.recommendations: deque[tuple[float, int]] = deque([(0.0, bounds.initial)])

    def apply(self, now: float, current: int, recommended: int) -> int:
        self.recommendations.append((now, recommended))
        while self.recommendations[0][0] < now - self.stabilization_seconds:
            self.recommendations.popleft()
        desired = recommended
        if desired < current:  # scale down only to the highest recommendation in the window
            desired = min(current, max(r for _, r in self.recommendations))
        up_limit = max(current + 4, 2 * current)  # Pods 4 / Percent 100 per 15 s: select Max
        return self.bounds.clamp(min(desired, up_limit))


class HpaGpuUtilization:
    name = "hpa-gpu"
    interval_seconds = 15.0

    def __init__(self, bounds: Bounds, target: float = 0.70, tolerance: float = 0.10):
        self.bounds, self.target, self.tolerance = bounds, target, tolerance
        self.behaviour = HpaBehaviour(bounds)

    def initial_replicas(self) -> int:
        return self.bounds.initial

    def control(self, view: ControlView) -> Action:
        sample = view.prometheus.latest(view.now)
        if sample is None or sample.gpu_utilization is None:
            return Action(view.desired_replicas, reason="no metric")
        ratio = sample.gpu_utilization / self.target
        current = view.desired_replicas
        recommended = current
        if abs(ratio - 1.0) > self.tolerance:
            recommended = math.ceil(ratio * max(1, view.pods))
        replicas = self.behaviour.apply(view.now, current, recommended)
        return Action(replicas, reason=f"gpu {sample.gpu_utilization:.0%}")


class KedaQueueLength:
    name = "keda-queue"
    interval_seconds = 15.0

    def __init__(self, bounds: Bounds, threshold: float, tolerance: float = 0.10):
        self.bounds, self.threshold, self.tolerance = bounds, threshold, tolerance
        self.behaviour = HpaBehaviour(bounds)

    def initial_replicas(self) -> int:
        return self.bounds.initial

    def control(self, view: ControlView) -> Action:
        sample = view.prometheus.latest(view.now)
        if sample is None:
            return Action(view.desired_replicas, reason="no metric")
        total = float(sum(sample.waiting.values()))
        current = view.desired_replicas
        recommended = current
        if abs(total / (self.threshold * max(1, current)) - 1.0) > self.tolerance:
            recommended = math.ceil(total / self.threshold)
        replicas = self.behaviour.apply(view.now, current, recommended)
        return Action(replicas, reason=f"waiting {total:.0f}")


class KnativeKpa:
    name = "kpa"
    interval_seconds = 2.0

    def __init__(
        self,
        bounds: Bounds,
        target_per_pod: float = 100 * 0.70,
        stable_seconds: float = 60.0,
        panic_seconds: float = 6.0,
        panic_threshold: float = 2.0,
        max_scale_down_rate: float = 2.0,
    ):
        self.bounds, self.target = bounds, target_per_pod
        self.stable_seconds, self.panic_seconds = stable_seconds, panic_seconds
        self.panic_threshold, self.max_scale_down_rate = panic_threshold, max_scale_down_rate
        self.panicking_since: float | None = None
        self.panic_desired = 0

    def initial_replicas(self) -> int:
        return self.bounds.initial

    def _average(self, view: ControlView, seconds: float) -> float | None:
        values = [c for t, c in view.concurrency if t > view.now - seconds]
        return sum(values) / len(values) if values else None

    def control(self, view: ControlView) -> Action:
        stable = self._average(view, self.stable_seconds)
        panic = self._average(view, self.panic_seconds)
        if stable is None or panic is None:
            return Action(view.desired_replicas, reason="no metric")
        ready = max(1, view.ready_replicas)
        desired_stable = math.ceil(stable / self.target)
        desired_panic = math.ceil(panic / self.target)
        if desired_panic / ready >= self.panic_threshold:
            if self.panicking_since is None:
                self.panic_desired = 0
            self.panicking_since = view.now
        elif (
            self.panicking_since is not None
            and view.now - self.panicking_since >= self.stable_seconds
        ):
            self.panicking_since = None
        if self.panicking_since is not None:
            self.panic_desired = max(self.panic_desired, desired_panic, view.desired_replicas)
            desired = self.panic_desired
        else:
            desired = desired_stable
        desired = max(desired, math.ceil(ready / self.max_scale_down_rate))
        mode = "panic" if self.panicking_since is not None else "stable"
        return Action(self.bounds.clamp(desired), reason=f"{mode} concurrency {stable:.1f}")


class Static:
    name = "static"
    interval_seconds = 3600.0

    def __init__(self, replicas: int):
        self.replicas = replicas

    def initial_replicas(self) -> int:
        return self.replicas

    def control(self, view: ControlView) -> Action:
        return Action(self.replicas, reason="static")


class Carpool:
    name = "carpool"

    def __init__(
        self, spec: PoolSpec, profile: Profile, bounds: Bounds, rate_window_seconds: float = 60.0
    ):
        self.spec, self.profile, self.bounds = spec, profile, bounds
        self.interval_seconds = float(spec.scaling.interval_seconds)
        self.rate_window_seconds = rate_window_seconds
        self.state = PolicyState()
        self.last_reason = ""

    def initial_replicas(self) -> int:
        return self.bounds.initial

    def control(self, view: ControlView) -> Action:
        obs = observation(
            view.prometheus,
            view.now,
            self.rate_window_seconds,
            [e.name for e in self.spec.endpoints],
            view.desired_replicas,
            view.ready_replicas,
            view.limits,
        )
        # Shift the run's clock to Unix time: the policy compares `now` with sample times.
        if obs.sampled_at is not None:
            obs = replace(obs, sampled_at=obs.sampled_at + EPOCH)
        decision = decide(obs, self.spec, self.state, view.now + EPOCH, self.profile)
        self.state = decision.state
        return Action(decision.replicas, dict(decision.limits), decision.reason)


class Scripted:
    """Replicas from a schedule: `schedule[k]` pods ready through period k (the last count holds
    after the schedule ends). At each control it asks for the most that any period starting
    within `lead_seconds + interval_seconds` needs: the first control whose look-ahead reaches
    a period comes at least `lead_seconds` before it, so a pod created then is ready in time.
    It scales down as soon as no period in the look-ahead needs the pods."""

    name = "clairvoyant"

    def __init__(
        self,
        schedule: Sequence[int],
        period_seconds: float,
        lead_seconds: float,
        interval_seconds: float = 5.0,
    ):
        if not schedule or min(schedule) < 1:
            raise ValueError("a schedule needs at least one period, each of at least 1 replica")
        self.schedule = list(schedule)
        self.period_seconds, self.lead_seconds = period_seconds, lead_seconds
        self.interval_seconds = interval_seconds

    def needed(self, start: float, end: float) -> int:
        """The most replicas any period overlapping [start, end] needs."""
        last = len(self.schedule) - 1
        first = min(last, int(start // self.period_seconds))
        final = min(last, int(end // self.period_seconds))
        return max(self.schedule[first : final + 1])

    def initial_replicas(self) -> int:
        return self.needed(0.0, self.lead_seconds)

    def control(self, view: ControlView) -> Action:
        ahead = view.now + self.lead_seconds + self.interval_seconds
        return Action(self.needed(view.now, ahead), reason="schedule")
