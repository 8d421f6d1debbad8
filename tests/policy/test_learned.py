"""Capacity learned from measured SLA misses keeps scale-down off loads that already failed."""

from __future__ import annotations

from carpool_policy import EndpointObservation, Observation, PolicyState, PoolSpec, decide
from carpool_policy.learned import learned_floor, record_breaches

SPEC = PoolSpec.from_crd(
    {
        "replicas": {"min": 1, "max": 4},
        "endpoints": [{"name": "chat", "sla": {"ttftP95Milliseconds": 500}}],
        "scaling": {"scaleDownStabilizationSeconds": 0},
    }
)


def seen(
    rate: float, ttft: float, desired: int, ready: int | None = None, now: float = 1000.0
) -> Observation:
    return Observation(
        sampled_at=now,
        available=True,
        desired_replicas=desired,
        ready_replicas=desired if ready is None else ready,
        endpoints={
            "chat": EndpointObservation(
                arrival_rate_per_second=rate,
                ttft_p95_seconds=ttft,
                queue_wait_p95_seconds=0.0,
                mean_prompt_tokens=100,
                mean_generated_tokens=10,
                waiting=0,
                running=1,
            )
        },
    )


def test_a_miss_with_every_replica_ready_records_the_load_per_replica() -> None:
    breaches = record_breaches({}, seen(24.0, 0.9, desired=1), SPEC, 1000.0, 1800.0)
    assert breaches == {"chat": (24.0, 1000.0)}


def test_a_miss_while_pods_start_teaches_nothing() -> None:
    assert record_breaches({}, seen(24.0, 0.9, desired=3, ready=1), SPEC, 1000.0, 1800.0) == {}


def test_the_lighter_of_two_misses_is_kept() -> None:
    first = record_breaches({}, seen(24.0, 0.9, desired=1), SPEC, 1000.0, 1800.0)
    second = record_breaches(first, seen(30.0, 0.9, desired=2), SPEC, 1010.0, 1800.0)
    assert second["chat"][0] == 15.0


def test_old_misses_are_forgotten() -> None:
    assert record_breaches({"chat": (10.0, 0.0)}, seen(5.0, 0.1, 1), SPEC, 5000.0, 1800.0) == {}


def test_the_floor_keeps_each_replica_below_the_margin_of_the_failed_load() -> None:
    # 24 req/s failed on one replica; at 24 req/s with a 0.8 margin three replicas are needed.
    assert learned_floor({"chat": (24.0, 0.0)}, seen(24.0, 0.05, 3), SPEC, 0.8) == 2
    assert learned_floor({"chat": (10.0, 0.0)}, seen(24.0, 0.05, 3), SPEC, 0.8) == 3
    assert learned_floor({}, seen(24.0, 0.05, 3), SPEC, 0.8) == 0


def test_decide_does_not_scale_down_onto_a_load_that_missed_the_sla() -> None:
    state = PolicyState(breaches={"chat": (20.0, 990.0)})
    decision = decide(seen(24.0, 0.05, desired=3), SPEC, state, 1000.0)
    assert decision.replicas >= 2
    assert decision.state.breaches["chat"] == (20.0, 990.0)


def test_decide_scales_down_once_the_load_is_gone() -> None:
    state = PolicyState(breaches={"chat": (20.0, 990.0)})
    decision = decide(seen(0.0, 0.05, desired=3), SPEC, state, 1000.0)
    assert decision.replicas < 3


TIGHT = PoolSpec.from_crd(
    {
        "replicas": {"min": 1, "max": 1},
        "endpoints": [
            {"name": "chat", "priority": 100, "sla": {"ttftP95Milliseconds": 500}},
            {
                "name": "batch",
                "priority": 0,
                "batching": {
                    "maxBatchSize": {"min": 2, "max": 32},
                    "batchWindowMilliseconds": {"min": 0, "max": 200},
                },
            },
        ],
    }
)


def test_a_measured_miss_at_max_replicas_shrinks_the_lower_priority_endpoint() -> None:
    observation = Observation(
        sampled_at=1000.0,
        available=True,
        desired_replicas=1,
        ready_replicas=1,
        endpoints={
            "chat": EndpointObservation(
                arrival_rate_per_second=30.0,
                ttft_p95_seconds=2.0,
                queue_wait_p95_seconds=1.5,
                mean_prompt_tokens=100,
                mean_generated_tokens=10,
                waiting=20,
                running=4,
            ),
            "batch": EndpointObservation(
                arrival_rate_per_second=2.0,
                ttft_p95_seconds=0.3,
                queue_wait_p95_seconds=0.2,
                mean_prompt_tokens=100,
                mean_generated_tokens=30,
                waiting=0,
                running=2,
            ),
        },
    )
    decision = decide(observation, TIGHT, PolicyState(), 1000.0)
    assert decision.limits["batch"].max_batch_size == 2
    assert decision.limits["batch"].batch_window_milliseconds == 0
