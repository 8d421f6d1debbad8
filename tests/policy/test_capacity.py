"""The capacity model and planner: directions that must hold whatever the constants."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from carpool_policy import DEFAULT_TUNING, EndpointLimits
from carpool_policy.capacity import EndpointLoad, forecast, prefill_moments
from carpool_policy.estimate import prompt_mix
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


def test_a_heavy_tailed_prompt_mix_prices_its_prefill_above_its_mean_prompts(w):
    # Mean 2,048 tokens either way: all at 2,048, or most short and one in eight at 8,192.
    # Prefill grows faster than the prompt, so the spread mix costs more GPU time per request,
    # and its long prompts make the others queue longer (a larger admission variance).
    spread = ((1170.3, 7 / 8), (8192.0, 1 / 8))
    mean, scv = prefill_moments(w.profile, spread)
    assert mean > 1.2 * w.profile.prefill_seconds(2048)
    assert scv > 1.0
    assert prefill_moments(w.profile, ((2048.0, 1.0),)) == (w.profile.prefill_seconds(2048), 0.0)
    assert prefill_moments(w.profile, ()) is None

    def replicas(priced: EndpointLoad) -> int:
        return plan(
            [priced, loads(10)[1]], w.spec(), w.profile, DEFAULT_TUNING, 0.85, 1, 16
        ).replicas

    # 10 req/s: 3 replicas at the mean prompt's prefill with the assumed variance (1).
    at_the_mean = loads(10)[0]
    same_prefill = w.profile.prefill_seconds(2048)
    assert replicas(at_the_mean) == 3
    assert replicas(replace(at_the_mean, prefill_seconds=mean)) > 3  # the mean prefill
    assert replicas(replace(at_the_mean, prefill_seconds=same_prefill, prefill_scv=scv)) > 3
    # Prompts of one length are not priced below the assumed variance: their admissions still
    # vary with what shares their steps.
    assert replicas(replace(at_the_mean, prefill_seconds=same_prefill, prefill_scv=0.0)) == 3


def test_the_prompt_mix_places_each_bucket_at_its_middle_scaled_to_the_measured_mean():
    buckets = ((64.0, 0.0), (128.0, 3.0), (256.0, 1.0), (math.inf, 0.0))
    mix = prompt_mix(buckets, mean_prompt=120.0)
    # Middles 96 and 192 at shares 3/4 and 1/4: a mean of 120, already the measured one.
    assert mix == ((96.0, 0.75), (192.0, 0.25))
    doubled = prompt_mix(buckets, mean_prompt=240.0)
    assert doubled == ((192.0, 0.75), (384.0, 0.25))
    assert prompt_mix(((64.0, 0.0), (math.inf, 0.0)), 100.0) == ()
