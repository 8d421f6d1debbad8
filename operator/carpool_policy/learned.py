"""Capacity learned from measured SLA misses: the guard against a model that is too optimistic.

Contract (pure): ``record_breaches(breaches, observation, spec, now, memory_seconds)`` returns
the per-endpoint record ``{endpoint: (arrivals per ready replica, time)}`` of the lightest load
at which the endpoint's measured p95 TTFT broke its budget while every replica was ready,
dropping records older than ``memory_seconds``. ``learned_floor(breaches, observation, spec,
margin)`` is the fewest replicas that keep each SLA endpoint's arrivals per replica below
``margin`` times that load, or 0 when nothing was learned.

Why: a profile measures the model's kernels, not a whole server (HTTP, scheduling, a slower
node), so its predicted capacity can be several times too high; the bounded model correction
cannot close such a gap. Without this guard the policy scales down under steady load, breaks
the SLA, scales up, and does it again every stabilization window. With it, the pool is never
scaled down onto a per-replica load that was already seen to fail.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from carpool_policy.types import Observation, PoolSpec

Breaches = Mapping[str, tuple[float, float]]


def record_breaches(
    breaches: Breaches,
    observation: Observation,
    spec: PoolSpec,
    now: float,
    memory_seconds: float,
) -> dict[str, tuple[float, float]]:
    kept = {name: (load, at) for name, (load, at) in breaches.items() if now - at <= memory_seconds}
    ready = observation.ready_replicas
    if not observation.available or ready < 1 or ready < observation.desired_replicas:
        return kept  # pods still starting: a miss now says little about a replica's capacity
    for endpoint in spec.endpoints:
        seen = observation.endpoints.get(endpoint.name)
        if not endpoint.has_sla or seen is None:
            continue
        measured, rate = seen.ttft_p95_seconds, seen.arrival_rate_per_second
        if measured is None or rate is None or rate <= 0 or measured <= endpoint.ttft_p95_seconds:
            continue
        per_replica = rate / ready
        previous = kept.get(endpoint.name)
        if previous is None or per_replica <= previous[0]:
            kept[endpoint.name] = (per_replica, now)
        else:  # the same limit seen again: keep the lighter load, refresh its age
            kept[endpoint.name] = (previous[0], now)
    return kept


def learned_floor(
    breaches: Breaches, observation: Observation, spec: PoolSpec, margin: float
) -> int:
    floor = 0
    for endpoint in spec.endpoints:
        record = breaches.get(endpoint.name)
        seen = observation.endpoints.get(endpoint.name)
        if record is None or seen is None or not seen.arrival_rate_per_second:
            continue
        safe_per_replica = record[0] * margin
        if safe_per_replica > 0:
            floor = max(floor, math.ceil(seen.arrival_rate_per_second / safe_per_replica))
    return floor
