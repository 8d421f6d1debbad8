"""Shared builders for the policy tests: a profile shaped like an 8B model on one H100, specs,
and observations with explicit times."""

from __future__ import annotations

import pytest

from carpool_policy import (
    EndpointLimits,
    EndpointObservation,
    Observation,
    PolicyState,
    PoolSpec,
    Profile,
)

NOW = 1_700_000_000.0


def h100_like_profile() -> Profile:
    decode = [
        {
            "batch_size": b,
            "context_tokens": c,
            "step_seconds": 0.0062 + b * c * 131072 / 3.0e12 + b * 16e9 / 700e12,
        }
        for b in (1, 4, 16, 64, 128)
        for c in (512, 2048, 8192)
    ]
    prefill = [
        {"prompt_tokens": n, "seconds": 0.006 + n * 16e9 / 500e12 + n * n * 4e6 / 500e12}
        for n in (128, 512, 2048, 8192)
    ]
    return Profile.from_dict(
        {
            "schema": "carpool.dev/profile/v1",
            "model": "bench-8b",
            "device": "NVIDIA H100 80GB HBM3",
            "kv_cache_tokens": 400_000,
            "max_batch_size": 256,
            "decode": decode,
            "prefill": prefill,
        }
    )


def pool_spec(min_replicas: int = 1, max_replicas: int = 16, **scaling) -> PoolSpec:
    return PoolSpec.from_crd(
        {
            "replicas": {"min": min_replicas, "max": max_replicas},
            "endpoints": [
                {
                    "name": "inline",
                    "priority": 100,
                    "default": True,
                    "sla": {"ttftP95Milliseconds": 1500},
                    "batching": {
                        "maxBatchSize": {"min": 1, "max": 32},
                        "batchWindowMilliseconds": {"max": 10},
                    },
                },
                {
                    "name": "offline",
                    "priority": 0,
                    "batching": {
                        "maxBatchSize": {"min": 4, "max": 128},
                        "batchWindowMilliseconds": {"max": 250},
                    },
                },
            ],
            "scaling": scaling,
        }
    )


def traffic(
    rate: float | None = 5.0,
    ttft: float | None = 0.7,
    waiting: float = 0.0,
    prompt: float = 2048.0,
    generated: float = 28.0,
    queue: float | None = 0.05,
    service: float | None = None,
) -> EndpointObservation:
    return EndpointObservation(
        arrival_rate_per_second=rate,
        burst_arrival_rate_per_second=rate,  # the last 15 s as busy as the minute
        mean_prompt_tokens=prompt,
        mean_generated_tokens=generated,
        queue_wait_p95_seconds=queue if ttft is not None else None,
        service_time_p95_seconds=service,
        ttft_p95_seconds=ttft,
        waiting=waiting,
        running=1.0,
        rejected_rate_per_second=0.0,
    )


IN_FORCE = {
    "inline": EndpointLimits(16, 0),
    "offline": EndpointLimits(64, 250),
}


def observe(
    replicas: int = 4,
    inline: EndpointObservation | None = None,
    offline: EndpointObservation | None = None,
    sampled_at: float | None = NOW - 5,
    available: bool = True,
    ready: int | None = None,
    pending: int = 0,
) -> Observation:
    return Observation(
        sampled_at=sampled_at,
        available=available,
        desired_replicas=replicas,
        ready_replicas=replicas if ready is None else ready,
        pending_unschedulable_replicas=pending,
        endpoints={
            "inline": inline if inline is not None else traffic(),
            "offline": offline if offline is not None else traffic(rate=0.5, ttft=None),
        },
        limits=IN_FORCE,
    )


def steady_history(replicas: int, now: float, seconds: int = 600) -> PolicyState:
    """A state whose recommendations have said `replicas` for `seconds`, every 15 s."""
    times = range(int(now) - seconds, int(now), 15)
    return PolicyState(
        recommendations=tuple((float(t), replicas) for t in times), last_observed_at=now - 15
    )


class World:
    """The builders, handed to tests as the `w` fixture (test modules cannot import conftest)."""

    NOW = NOW
    IN_FORCE = IN_FORCE
    spec = staticmethod(pool_spec)
    traffic = staticmethod(traffic)
    observe = staticmethod(observe)
    steady_history = staticmethod(steady_history)
    profile = h100_like_profile()


@pytest.fixture(scope="session")
def w() -> type[World]:
    return World
