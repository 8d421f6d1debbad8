"""The simulated pool: pods that start, serve, drain and stop, and the gateway in front of them.

Contract:
- `scale_to(n, now)` keeps `n` pods that are starting or ready. New pods become ready
  `startup_seconds` later (a GPU pod loading its model); removing pods takes starting ones
  first (newest first), then the ready ones with the least work. A removed ready pod drains:
  it takes no new requests, hands its queue back to the gateway, finishes what it runs.
- `route(request, now)` sends a request to a ready pod as the pool's `routing` says:
  `least-request` (a gateway such as `make demo`'s client: the pod with the fewest outstanding
  requests of its endpoint; ties: fewest outstanding overall, then lowest index) or `random`
  (the pool's Kubernetes Service through kube-proxy: any ready pod alike, drawn from the pool's
  own generator seeded by `routing_seed`, so a run is still deterministic). With no ready pod
  the gateway holds the request until one is.
- GPU time is counted from a pod's creation until it stops (loading counts: the GPU is held).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from carpool_replica.limits import EndpointLimits
from carpool_replica.profile import Profile
from carpool_sim.metrics import RunRecorder
from carpool_sim.replica import Replica
from carpool_sim.trace import Request

LEAST_REQUEST, RANDOM = "least-request", "random"
ROUTINGS = (LEAST_REQUEST, RANDOM)


class Pod:
    __slots__ = ("index", "replica", "created_at", "ready_at", "stopped_at", "draining")

    def __init__(self, index: int, replica: Replica, created_at: float, ready_at: float):
        self.index = index
        self.replica = replica
        self.created_at = created_at
        self.ready_at = ready_at
        self.stopped_at: float | None = None
        self.draining = False

    def ready(self, now: float) -> bool:
        return not self.draining and self.stopped_at is None and self.ready_at <= now


class Pool:
    def __init__(
        self,
        profile: Profile,
        limits: dict[str, EndpointLimits],
        recorder: RunRecorder,
        *,
        startup_seconds: float,
        on_replica_changed: Callable[[Pod], None],
        routing: str,
        routing_seed: int,
    ):
        if routing not in ROUTINGS:
            raise ValueError(f"routing {routing!r}: expected one of {', '.join(ROUTINGS)}")
        # One cost cache for every pod: they share a profile, so they share its answers.
        self.profile = profile
        self.limits = dict(limits)
        self.recorder = recorder
        self.startup_seconds = startup_seconds
        self.on_replica_changed = on_replica_changed
        self.pods: list[Pod] = []  # every pod ever created
        self.held: list[Request] = []  # at the gateway, waiting for a ready pod
        self.routing = routing
        self.draw = random.Random(routing_seed)

    # -- views -------------------------------------------------------------------------------

    def live(self) -> list[Pod]:
        """Pods that count towards the desired replicas: starting or ready, not draining."""
        return [p for p in self.pods if p.stopped_at is None and not p.draining]

    def ready_pods(self, now: float) -> list[Pod]:
        return [p for p in self.pods if p.ready(now)]

    def running_pods(self) -> list[Pod]:
        """Pods holding a GPU: starting, ready or draining."""
        return [p for p in self.pods if p.stopped_at is None]

    def gpu_seconds(self, now: float) -> float:
        return sum(
            (p.stopped_at if p.stopped_at is not None else now) - p.created_at for p in self.pods
        )

    # -- scaling -----------------------------------------------------------------------------

    def add_pod(self, now: float, ready_at: float) -> Pod:
        replica = Replica.of_profile(self.profile, self.limits, self.recorder)
        pod = Pod(len(self.pods), replica, now, ready_at)
        self.pods.append(pod)
        return pod

    def scale_to(self, replicas: int, now: float) -> list[Pod]:
        """Returns the pods created (the caller schedules their readiness)."""
        live = self.live()
        created = [
            self.add_pod(now, now + self.startup_seconds) for _ in range(replicas - len(live))
        ]
        surplus = len(live) - replicas
        if surplus > 0:
            starting = sorted((p for p in live if p.ready_at > now), key=lambda p: -p.created_at)
            ready = sorted(
                (p for p in live if p.ready_at <= now),
                key=lambda p: (p.replica.waiting() + p.replica.running_count(), -p.index),
            )
            for pod in (starting + ready)[:surplus]:
                self._stop(pod, now)
        return created

    def _stop(self, pod: Pod, now: float) -> None:
        if pod.ready_at > now:
            pod.stopped_at = now
            return
        pod.replica.run_until(now)
        pod.draining = True
        for request in pod.replica.take_waiting():
            self.route(request, now)
        self.reap(pod, now)

    def reap(self, pod: Pod, now: float) -> None:
        """Stop a draining pod once it has nothing left to do."""
        if pod.draining and pod.stopped_at is None and pod.replica.idle:
            pod.stopped_at = now

    def set_limits(self, limits: dict[str, EndpointLimits], now: float) -> None:
        self.limits.update(limits)
        for pod in self.running_pods():
            pod.replica.run_until(now)
            pod.replica.set_limits(limits, now)
            self.on_replica_changed(pod)

    # -- traffic -----------------------------------------------------------------------------

    def route(self, request: Request, now: float) -> None:
        ready = self.ready_pods(now)
        if not ready:
            self.held.append(request)
            return
        pod = self._pick(ready, request.endpoint)
        pod.replica.run_until(now)
        pod.replica.submit(request, now)
        self.on_replica_changed(pod)

    def _pick(self, ready: list[Pod], endpoint: str) -> Pod:
        if self.routing == RANDOM:
            return ready[self.draw.randrange(len(ready))]
        return min(
            ready,
            key=lambda p: (
                p.replica.outstanding(endpoint),
                p.replica.waiting() + p.replica.running_count(),
                p.index,
            ),
        )

    def release_held(self, now: float) -> None:
        held, self.held = self.held, []
        for request in held:
            self.route(request, now)
