"""The discrete-event loop: one trace, one controller, one pool, from the first arrival until
every request is served or rejected.

Contract: `simulate(requests, spec, profile, controller, config)` is deterministic (no clock
reads; `random` routing draws from a generator seeded by the config) and returns a `RunResult`
with every request's outcome, the GPU-seconds spent and the replica timeline. Events, in time order:
- arrivals go through the gateway to a pod, as `config.routing` says (`carpool_sim.pool`);
- each pod's replica wakes at the end of its current engine segment;
- pods become ready `startup_seconds` after creation;
- Prometheus scrapes every `scrape_interval_seconds`; queue-proxies report in-flight requests
  every second (KPA reads those, not Prometheus);
- the controller runs every `controller.interval_seconds`, from time 0.
The run ends when every request is resolved, or `drain_limit_seconds` after the last arrival
(what is still unresolved then counts as missing its SLA).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from carpool_policy import EndpointLimits, PoolSpec, Profile
from carpool_replica.limits import EndpointLimits as WorkerLimits
from carpool_sim.controllers import Action, Controller, ControlView
from carpool_sim.metrics import RunRecorder
from carpool_sim.pool import LEAST_REQUEST, Pod, Pool
from carpool_sim.prometheus import Prometheus, Sample
from carpool_sim.trace import Request


@dataclass(frozen=True)
class SimConfig:
    startup_seconds: float = 60.0
    scrape_interval_seconds: float = 15.0
    drain_limit_seconds: float = 1800.0
    timeline_interval_seconds: float = 5.0
    # How requests reach the pods (`carpool_sim.pool.ROUTINGS`): a least-request gateway, or
    # the pool's Service (kube-proxy picks any ready pod at random).
    routing: str = LEAST_REQUEST
    routing_seed: int = 0


@dataclass
class RunResult:
    policy: str
    recorder: RunRecorder
    gpu_seconds: float
    end_seconds: float
    scale_events: int
    # (time, desired replicas, ready replicas), every `timeline_interval_seconds`.
    timeline: list[tuple[float, int, int]] = field(default_factory=list)
    reasons: list[tuple[float, str]] = field(default_factory=list)


def initial_limits(spec: PoolSpec) -> dict[str, EndpointLimits]:
    """What the workers run before any controller retunes them: the largest batch, no window."""
    return {
        e.name: EndpointLimits(e.max_batch_size.max, e.batch_window_milliseconds.min)
        for e in spec.endpoints
    }


def worker_limits(spec: PoolSpec, limits: dict[str, EndpointLimits]) -> dict[str, WorkerLimits]:
    """The limits document's endpoints that the operator would push for these decisions."""
    return {
        e.name: WorkerLimits(
            priority=e.priority,
            max_batch_size=limits[e.name].max_batch_size,
            batch_window_ms=limits[e.name].batch_window_milliseconds,
            max_queue_wait_ms=e.max_queue_wait_milliseconds,
            max_queue_length=e.max_queue_length,
        )
        for e in spec.endpoints
    }


ARRIVAL, REPLICA, READY, SCRAPE, SAMPLE, CONTROL = range(6)


def simulate(
    requests: list[Request],
    spec: PoolSpec,
    profile: Profile,
    controller: Controller,
    config: SimConfig = SimConfig(),
    progress: Callable[[float], None] | None = None,
) -> RunResult:
    recorder = RunRecorder(requests)
    prometheus = Prometheus()
    limits = initial_limits(spec)
    heap: list[tuple[float, int, int, object]] = []
    order = itertools.count()
    versions: dict[int, int] = {}

    def push(time: float, kind: int, payload: object = None) -> None:
        heapq.heappush(heap, (time, next(order), kind, payload))

    def replica_changed(pod: Pod) -> None:
        wake = pod.replica.next_event
        if wake is not None:
            versions[pod.index] = versions.get(pod.index, 0) + 1
            push(wake, REPLICA, (pod, versions[pod.index]))

    pool = Pool(
        profile,
        worker_limits(spec, limits),
        recorder,
        startup_seconds=config.startup_seconds,
        on_replica_changed=lambda pod: None,
        routing=config.routing,
        routing_seed=config.routing_seed,
    )
    pool.on_replica_changed = replica_changed
    for _ in range(controller.initial_replicas()):
        pool.add_pod(0.0, 0.0)
    desired = len(pool.live())

    for i, request in enumerate(requests):
        push(request.arrival_seconds, ARRIVAL, i)
    last_arrival = requests[-1].arrival_seconds if requests else 0.0
    push(0.0, SCRAPE)
    push(0.0, SAMPLE)
    push(0.0, CONTROL)

    concurrency: deque[tuple[float, float]] = deque(maxlen=120)
    busy_at_last_scrape: dict[int, tuple[float, float]] = {}
    result = RunResult(controller.name, recorder, 0.0, 0.0, 0)
    now = 0.0
    hard_stop = last_arrival + config.drain_limit_seconds

    while heap:
        now, _, kind, payload = heapq.heappop(heap)
        if now > hard_stop or (
            recorder.resolved == len(requests) and now >= last_arrival and kind != REPLICA
        ):
            break
        if kind == ARRIVAL:
            pool.route(requests[payload], now)
            if progress is not None and payload % 500 == 0:
                progress(now)
        elif kind == REPLICA:
            pod, version = payload
            if versions.get(pod.index) != version or pod.stopped_at is not None:
                continue
            pod.replica.run_until(now)
            wake = pod.replica.next_event
            if wake is not None:
                versions[pod.index] += 1
                push(wake, REPLICA, (pod, versions[pod.index]))
            pool.reap(pod, now)
        elif kind == READY:
            pool.release_held(now)
        elif kind == SCRAPE:
            prometheus.scrape(_scrape(pool, recorder, now, busy_at_last_scrape))
            push(now + config.scrape_interval_seconds, SCRAPE)
        elif kind == SAMPLE:
            ready = pool.ready_pods(now)
            for pod in ready:
                pod.replica.run_until(now)
            in_flight = sum(p.replica.waiting() + p.replica.running_count() for p in ready)
            concurrency.append((now, float(in_flight)))
            if now % config.timeline_interval_seconds < 1.0:
                result.timeline.append((now, desired, len(ready)))
            push(now + 1.0, SAMPLE)
        elif kind == CONTROL:
            view = ControlView(
                now, desired, len(pool.ready_pods(now)), len(pool.live()), prometheus,
                dict(limits), concurrency,
            )  # fmt: skip
            action: Action = controller.control(view)
            if action.limits is not None and action.limits != limits:
                limits = dict(action.limits)
                pool.set_limits(worker_limits(spec, limits), now)
            if action.replicas != desired:
                result.scale_events += 1
                result.reasons.append((now, action.reason))
                desired = action.replicas
                for pod in pool.scale_to(desired, now):
                    push(pod.ready_at, READY)
            push(now + controller.interval_seconds, CONTROL)

    result.end_seconds = max(now, last_arrival)
    result.gpu_seconds = pool.gpu_seconds(result.end_seconds)
    return result


def _scrape(
    pool: Pool, recorder: RunRecorder, now: float, last: dict[int, tuple[float, float]]
) -> Sample:
    waiting: dict[str, int] = {}
    running: dict[str, int] = {}
    utilizations = []
    for pod in pool.running_pods():
        pod.replica.run_until(now)
        busy = pod.replica.busy_seconds_at(now)
        then, busy_then = last.get(pod.index, (pod.created_at, 0.0))
        last[pod.index] = (now, busy)
        if not pod.draining:
            utilizations.append((busy - busy_then) / (now - then) if now > then else 0.0)
        for name, (queued, in_batch) in pod.replica.scheduler.counts().items():
            waiting[name] = waiting.get(name, 0) + queued
            running[name] = running.get(name, 0) + in_batch
    return Sample(
        time=now,
        series=recorder.snapshot(),
        waiting=waiting,
        running=running,
        gpu_utilization=sum(utilizations) / len(utilizations) if utilizations else None,
        ready_replicas=len(pool.ready_pods(now)),
    )
