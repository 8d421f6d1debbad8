"""decide(): one behaviour per test, explicit `now`."""

from __future__ import annotations

from dataclasses import replace

import pytest

from carpool_policy import EndpointLimits, Observation, PolicyState, decide


@pytest.mark.parametrize(
    ("case", "observation_change", "reason"),
    [
        ("prometheus down", {"available": False}, "PrometheusUnavailable"),
        ("no samples", {"sampled_at": None}, "NoSamples"),
        ("stale samples", {"sampled_at": -3600}, "MetricsStale"),
    ],
)
def test_unusable_metrics_hold_replicas_and_limits(w, case, observation_change, reason):
    base = w.observe(replicas=6, inline=w.traffic(rate=0.0))
    if observation_change.get("sampled_at") == -3600:
        observation_change = {"sampled_at": w.NOW - 3600}
    observation = Observation(**{**base.__dict__, **observation_change})
    decision = decide(observation, w.spec(), w.steady_history(1, w.NOW), w.NOW, profile=w.profile)
    assert decision.replicas == 6
    assert decision.limits == w.IN_FORCE
    assert decision.condition("MetricsAvailable").reason == reason
    assert decision.changed is False


def test_missing_arrival_series_never_scales_down(w):
    observation = w.observe(replicas=8, inline=w.traffic(rate=None, ttft=None))
    decision = decide(observation, w.spec(), w.steady_history(1, w.NOW), w.NOW, profile=w.profile)
    assert decision.replicas == 8
    assert decision.condition("MetricsAvailable").reason == "SeriesMissing"


def test_a_missing_burst_window_says_how_to_measure_it_and_the_policy_still_acts(w):
    fresh = w.traffic(rate=1.0)
    unmeasured = replace(fresh, burst_arrival_rate_per_second=None)
    state = w.steady_history(1, w.NOW)
    assert (
        decide(w.observe(8, fresh), w.spec(), state, w.NOW, w.profile)
        .condition("MetricsAvailable")
        .reason
        == "MetricsFresh"
    )
    decision = decide(w.observe(8, unmeasured), w.spec(), state, w.NOW, w.profile)
    condition = decision.condition("MetricsAvailable")
    assert (condition.status, condition.reason) == ("True", "BurstWindowMissing")
    assert "for inline" in condition.message
    assert "scrape the workers at least every 7.5 s" in condition.message
    assert decision.replicas < 8  # the minute's rate stands in: the pool still scales down


def test_burst_scales_up_at_once_within_the_step_limit(w):
    observation = w.observe(replicas=2, inline=w.traffic(rate=40.0, ttft=1.4))
    decision = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    assert decision.replicas == 2 + 4
    assert "scale-up limited to 4" in decision.reason


def test_growing_queue_adds_replicas(w):
    calm = decide(w.observe(4, w.traffic(10.0)), w.spec(), PolicyState(), w.NOW, profile=w.profile)
    queued = decide(
        w.observe(4, w.traffic(10.0, waiting=300)),
        w.spec(),
        PolicyState(),
        w.NOW,
        profile=w.profile,
    )
    assert queued.recommended_replicas > calm.recommended_replicas


def test_low_load_waits_a_full_stabilization_window_before_scaling_down(w):
    state = PolicyState(recommendations=((w.NOW - 100, 8),), last_observed_at=w.NOW - 15)
    observation = w.observe(replicas=8, inline=w.traffic(rate=1.0))
    decision = decide(observation, w.spec(), state, w.NOW, profile=w.profile)
    assert decision.replicas == 8
    assert "waits for 300 s" in decision.reason


def test_recent_high_recommendation_holds_scale_down(w):
    state = PolicyState(
        recommendations=((w.NOW - 400, 2), (w.NOW - 60, 8)), last_observed_at=w.NOW - 15
    )
    observation = w.observe(replicas=8, inline=w.traffic(rate=1.0))
    decision = decide(observation, w.spec(), state, w.NOW, profile=w.profile)
    assert decision.replicas == 8
    assert "stabilizing" in decision.reason


def test_scale_down_after_the_window_is_bounded_per_decision(w):
    observation = w.observe(replicas=12, inline=w.traffic(rate=1.0))
    decision = decide(observation, w.spec(), w.steady_history(1, w.NOW), w.NOW, profile=w.profile)
    assert decision.replicas == 12 - 3  # a quarter of 12


def test_scale_down_steps_at_most_once_a_minute(w):
    # A quiet spell must not take the pool from 12 to 1 in the minute before traffic returns:
    # it shrinks no faster than its pods could come back.
    observation = w.observe(replicas=12, inline=w.traffic(rate=1.0))
    history = w.steady_history(1, w.NOW)
    just_stepped = replace(history, last_scale_down_at=w.NOW - 15)
    paced = decide(observation, w.spec(), just_stepped, w.NOW, profile=w.profile)
    assert paced.replicas == 12
    assert "paced: one step per 60 s" in paced.reason
    assert "scale_down_step" in paced.rules
    a_minute_on = replace(history, last_scale_down_at=w.NOW - 60)
    stepped = decide(observation, w.spec(), a_minute_on, w.NOW, profile=w.profile)
    assert stepped.replicas == 12 - 3
    assert stepped.state.last_scale_down_at == w.NOW


def test_load_inside_the_hysteresis_band_holds(w):
    planned = decide(
        w.observe(1, w.traffic(20.0)), w.spec(), PolicyState(), w.NOW, profile=w.profile
    ).recommended_replicas
    # One replica more than the targets need is inside the band: no scale-down.
    observation = w.observe(replicas=planned + 1, inline=w.traffic(20.0))
    decision = decide(
        observation, w.spec(), w.steady_history(planned + 1, w.NOW), w.NOW, profile=w.profile
    )
    assert decision.replicas == planned + 1


def test_unschedulable_pods_stop_scale_up_and_shrink_the_throughput_class(w):
    observation = w.observe(
        replicas=4,
        ready=3,
        pending=1,
        inline=w.traffic(rate=40.0),
        offline=w.traffic(rate=1.0, ttft=None, waiting=50),
    )
    decision = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    assert decision.replicas == 4
    assert decision.condition("CapacityLimited").status == "True"
    assert decision.limits["offline"].max_batch_size < w.IN_FORCE["offline"].max_batch_size


def test_recommend_mode_applies_nothing_but_says_what_it_would_do(w):
    observation = w.observe(replicas=2, inline=w.traffic(rate=40.0, ttft=1.4))
    decision = decide(
        observation, w.spec(mode="Recommend"), PolicyState(), w.NOW, profile=w.profile
    )
    assert decision.replicas == 2
    assert decision.recommended_replicas > 2
    assert decision.limits == w.IN_FORCE


def test_measured_sla_miss_adds_a_replica_even_when_the_model_disagrees(w):
    observation = w.observe(replicas=6, inline=w.traffic(rate=1.0, ttft=3.0))
    decision = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    assert decision.replicas > 6
    assert decision.condition("SLAMet").status == "False"


def test_without_a_profile_a_measured_miss_scales_up_in_proportion(w):
    observation = w.observe(replicas=4, inline=w.traffic(rate=10.0, ttft=2.25))
    decision = decide(observation, w.spec(), PolicyState(), w.NOW)
    # 2.25 s against 85% of 1.5 s: about 1.76x the replicas.
    assert decision.replicas == 8


def test_without_a_profile_an_idle_pool_goes_to_its_minimum(w):
    observation = w.observe(
        replicas=3, inline=w.traffic(0.0, ttft=None), offline=w.traffic(0.0, ttft=None)
    )
    decision = decide(observation, w.spec(), w.steady_history(1, w.NOW), w.NOW)
    assert decision.replicas == 2  # one step of a quarter, at least one


def test_replicas_outside_the_spec_are_brought_inside(w):
    observation = w.observe(replicas=40, inline=w.traffic(rate=1.0))
    decision = decide(observation, w.spec(max_replicas=16), PolicyState(), w.NOW, profile=w.profile)
    assert decision.replicas == 16


def test_repeating_the_same_decision_reports_no_change(w):
    observation = w.observe(replicas=4, inline=w.traffic(rate=10.0))
    first = decide(observation, w.spec(), w.steady_history(4, w.NOW), w.NOW, profile=w.profile)
    again = Observation(
        **{
            **observation.__dict__,
            "desired_replicas": first.replicas,
            "ready_replicas": first.replicas,
            "limits": first.limits,
        }
    )
    second = decide(again, w.spec(), first.state, w.NOW + 15, profile=w.profile)
    assert second.changed is False


def test_reason_carries_the_numbers_behind_a_scale_up(w):
    observation = w.observe(replicas=2, inline=w.traffic(rate=12.5, ttft=1.4))
    decision = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    assert "scale up 2 ->" in decision.reason
    assert "inline 12.50 req/s" in decision.reason
    assert "prompt 2048 / output 28 tokens" in decision.reason
    assert "budget 1500 ms" in decision.reason


def test_decision_predicts_p95_ttft_for_sla_endpoints(w):
    decision = decide(
        w.observe(4, w.traffic(10.0)), w.spec(), PolicyState(), w.NOW, profile=w.profile
    )
    predicted = decision.predicted_ttft_p95_seconds["inline"]
    assert predicted is not None and 0 < predicted < 1.5


def test_limits_are_clamped_into_new_spec_bounds_when_holding(w):
    base = w.observe(replicas=3)
    observation = Observation(
        **{
            **base.__dict__,
            "available": False,
            "limits": {"inline": EndpointLimits(500, 99), "offline": EndpointLimits(1, 0)},
        }
    )
    decision = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    assert decision.limits["inline"] == EndpointLimits(32, 10)
    assert decision.limits["offline"] == EndpointLimits(4, 0)
