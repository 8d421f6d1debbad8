"""The capacity model and planner: directions that must hold whatever the constants."""

from __future__ import annotations

import math

import pytest

from carpool_policy import DEFAULT_TUNING, EndpointLimits
from carpool_policy.capacity import EndpointLoad, forecast
from carpool_policy.planner import plan

LIMITS = {"inline": EndpointLimits(32, 0), "offline": EndpointLimits(128, 250)}


def loads(rate: float, backlog: bool = False) -> list[EndpointLoad]:
    return [
        EndpointLoad("inline", 100, rate, 2048, 28, 1.5),
        EndpointLoad("offline", 0, 0.5, 1000, 200, None, backlogged=backlog),
    ]


def test_more_replicas_predict_a_lower_ttft(w):
    few = forecast(loads(20), LIMITS, 4, w.profile, DEFAULT_TUNING).endpoints["inline"]
    many = forecast(loads(20), LIMITS, 8, w.profile, DEFAULT_TUNING).endpoints["inline"]
    assert many.ttft_p95_seconds < few.ttft_p95_seconds


def test_overloaded_pool_predicts_an_unbounded_ttft(w):
    # One replica prefills 2K prompts at about 9 per second.
    result = forecast(loads(50), LIMITS, 1, w.profile, DEFAULT_TUNING)
    assert math.isinf(result.endpoints["inline"].ttft_p95_seconds)


def test_backlogged_throughput_class_fills_its_slots(w):
    limits = {**LIMITS, "offline": EndpointLimits(8, 250)}
    result = forecast(loads(1, backlog=True), limits, 2, w.profile, DEFAULT_TUNING)
    assert result.endpoints["offline"].running_per_replica == pytest.approx(8)


def test_backlogged_throughput_class_never_takes_more_than_the_whole_gpu(w):
    result = forecast(loads(1, backlog=True), LIMITS, 2, w.profile, DEFAULT_TUNING)
    assert result.admission_utilization <= 1.0 + 1e-9


def test_planner_sizes_replicas_from_arrival_rate_and_prefill_cost(w):
    # 40 req/s of 2K prompts at ~0.1 s each is 4 GPUs of pure prefill; queueing needs more.
    result = plan(loads(40), w.spec(), w.profile, DEFAULT_TUNING, 0.85, 1, 16)
    assert result.fits
    assert 5 <= result.replicas <= 12


def test_throughput_class_gets_its_largest_batch_when_there_is_room(w):
    result = plan(loads(2, backlog=True), w.spec(), w.profile, DEFAULT_TUNING, 0.85, 1, 16)
    assert result.limits["offline"].max_batch_size == 128


def test_throughput_class_is_shrunk_when_replicas_run_out(w):
    result = plan(loads(40, backlog=True), w.spec(), w.profile, DEFAULT_TUNING, 0.85, 1, 5)
    assert result.limits["offline"].max_batch_size < 128
    assert "offline" in result.shrunk
