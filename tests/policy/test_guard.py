"""Queue delay is the controlled variable: one test per rule of estimate and guard."""

from __future__ import annotations

import dataclasses

import pytest

from carpool_policy import PolicyState, PoolSpec, SpecError, decide
from carpool_policy.estimate import queue_budget
from carpool_policy.explain import RULES
from carpool_policy.tuning import DEFAULT_TUNING


def with_queue_budget(spec: PoolSpec, milliseconds: int, ttft: bool = True) -> PoolSpec:
    inline = dataclasses.replace(
        spec.endpoints[0],
        queue_wait_p95_seconds=milliseconds / 1000.0,
        ttft_p95_seconds=spec.endpoints[0].ttft_p95_seconds if ttft else None,
    )
    return dataclasses.replace(spec, endpoints=(inline, *spec.endpoints[1:]))


def settled_state(w, replicas: int) -> PolicyState:
    """A history spanning the stabilization window, so scale-down is not held by damping."""
    return PolicyState(recommendations=((w.NOW - 1000, 1),), last_observed_at=w.NOW - 15)


def test_queue_budget_is_the_ttft_budget_less_the_measured_service_time(w):
    inline = w.spec().endpoints[0]
    assert queue_budget(inline, 0.4, DEFAULT_TUNING) == (pytest.approx(1.1), False)


def test_queue_budget_is_unknown_until_service_time_is_measured(w):
    assert queue_budget(w.spec().endpoints[0], None, DEFAULT_TUNING) == (None, False)


def test_the_decision_reports_the_queue_budget_it_judged_each_sla_endpoint_by(w):
    observation = w.observe(4, w.traffic(rate=5.0, ttft=0.5, queue=0.05, service=0.4))
    decision = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    assert decision.queue_budget_seconds == {"inline": pytest.approx(1.1)}


def test_an_explicit_queue_budget_wins_over_the_ttft_budget(w):
    inline = with_queue_budget(w.spec(), 200).endpoints[0]
    assert queue_budget(inline, 0.4, DEFAULT_TUNING) == (pytest.approx(0.2), False)


def test_a_measured_queue_breach_scales_up_whatever_the_model_says(w):
    # 1 req/s needs one replica by the model; the queue measured 300 ms against 200 ms.
    spec = with_queue_budget(w.spec(), 200)
    observation = w.observe(4, w.traffic(rate=1.0, ttft=0.6, queue=0.3, service=0.3))
    decision = decide(observation, spec, PolicyState(), w.NOW, profile=w.profile)
    assert decision.replicas > 4
    assert "queue_breach" in decision.rules


def test_a_ttft_miss_from_queueing_is_a_breach_without_an_explicit_queue_budget(w):
    # 1500 ms TTFT budget, 1300 ms service: queue budget 200 ms, measured 400 ms.
    observation = w.observe(4, w.traffic(rate=1.0, ttft=1.7, queue=0.4, service=1.3))
    decision = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    assert decision.replicas > 4
    assert "queue_breach" in decision.rules


def test_a_queue_well_inside_its_budget_never_scales_up(w):
    # The model wants more replicas for 40 req/s on 2; the queue measured 20 ms of 1100 ms.
    observation = w.observe(2, w.traffic(rate=40.0, ttft=0.42, queue=0.02, service=0.4))
    decision = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    assert decision.replicas == 2
    assert decision.rules == ("queue_within_budget",)


def test_a_queue_near_its_budget_scales_up_before_it_breaches(w):
    # 1000 ms of a 1100 ms queue budget: past the 85% the model plans for, not yet a breach.
    observation = w.observe(2, w.traffic(rate=40.0, ttft=1.4, queue=1.0, service=0.4))
    decision = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    assert decision.replicas > 2
    assert "queue_breach" not in decision.rules


def test_a_queue_above_the_scale_down_fraction_blocks_scale_down(w):
    # 1 req/s on 8 replicas: the model would shrink; the queue measured 900 ms of 1100 ms.
    observation = w.observe(8, w.traffic(rate=1.0, ttft=1.3, queue=0.9, service=0.4))
    decision = decide(observation, w.spec(), settled_state(w, 8), w.NOW, profile=w.profile)
    assert decision.replicas == 8
    assert "queue_not_low" in decision.rules


def test_a_quiet_queue_lets_the_model_scale_down(w):
    observation = w.observe(8, w.traffic(rate=1.0, ttft=0.45, queue=0.05, service=0.4))
    decision = decide(observation, w.spec(), settled_state(w, 8), w.NOW, profile=w.profile)
    assert decision.replicas < 8


@pytest.mark.parametrize("queue_budget", [None, 200])
def test_traffic_without_a_queue_delay_measurement_never_scales_down(w, queue_budget):
    # The queue delay is the queue-wait p95, against a budget from the TTFT budget or given:
    # without its series nothing says the smaller pool would hold.
    spec = w.spec() if queue_budget is None else with_queue_budget(w.spec(), queue_budget)
    seen = dataclasses.replace(w.traffic(rate=1.0, service=0.4), queue_wait_p95_seconds=None)
    decision = decide(w.observe(8, seen), spec, settled_state(w, 8), w.NOW, profile=w.profile)
    assert decision.replicas == 8
    assert "queue_wait_missing" in decision.rules


def test_service_time_over_the_ttft_budget_reports_the_sla_unreachable(w):
    observation = w.observe(4, w.traffic(rate=1.0, ttft=2.1, queue=0.05, service=2.0))
    decision = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    reachable = decision.condition("SLAReachable")
    assert reachable.status == "False"
    assert "inline" in reachable.message and "2000 ms" in reachable.message
    assert "sla_unreachable" in decision.rules


def test_an_unreachable_sla_is_not_chased_with_replicas(w):
    # TTFT 2.1 s over a 1.5 s budget, but the queue is 50 ms: replicas would not help.
    observation = w.observe(4, w.traffic(rate=1.0, ttft=2.1, queue=0.05, service=2.0))
    decision = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    assert decision.replicas <= 4


def test_a_reachable_sla_says_so(w):
    observation = w.observe(4, w.traffic(rate=1.0, ttft=0.5, queue=0.05, service=0.4))
    decision = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    assert decision.condition("SLAReachable").status == "True"


def test_a_queue_budget_alone_makes_an_sla_endpoint(w):
    spec = with_queue_budget(w.spec(), 200, ttft=False)
    assert spec.endpoints[0].has_sla
    observation = w.observe(4, w.traffic(rate=1.0, ttft=0.6, queue=0.3, service=0.3))
    decision = decide(observation, spec, PolicyState(), w.NOW, profile=w.profile)
    assert "queue_breach" in decision.rules


def test_recommend_mode_reports_the_limits_auto_would_set(w):
    observation = w.observe(2, w.traffic(rate=12.5, ttft=1.4, queue=0.8, service=0.4))
    auto = decide(observation, w.spec(), PolicyState(), w.NOW, profile=w.profile)
    recommend = decide(
        observation, w.spec(mode="Recommend"), PolicyState(), w.NOW, profile=w.profile
    )
    assert recommend.limits == w.IN_FORCE
    assert recommend.recommended_limits == auto.limits != w.IN_FORCE
    assert "Auto would retune" in recommend.reason


def test_without_a_profile_replicas_follow_the_measured_queue_wait(w):
    # Queue 990 ms against 1100 ms (0.9): up at 85% of the budget; TTFT alone would not say so.
    observation = w.observe(4, w.traffic(rate=5.0, ttft=1.39, queue=0.99, service=0.4))
    decision = decide(observation, w.spec(), PolicyState(), w.NOW)
    assert decision.replicas == 5


def test_every_rule_a_decision_names_is_in_the_vocabulary(w):
    observation = w.observe(4, w.traffic(rate=1.0, ttft=2.1, queue=0.3, service=2.0))
    decision = decide(observation, w.spec(mode="Recommend"), PolicyState(), w.NOW, w.profile)
    assert decision.rules and set(decision.rules) <= set(RULES)
    assert f"rules: {', '.join(decision.rules)}" in decision.reason


def test_the_spec_refuses_a_queue_budget_not_below_the_ttft_budget():
    with pytest.raises(SpecError, match="queueWaitP95Milliseconds"):
        PoolSpec.from_crd(
            {
                "replicas": {"min": 1, "max": 2},
                "endpoints": [
                    {
                        "name": "a",
                        "sla": {"ttftP95Milliseconds": 500, "queueWaitP95Milliseconds": 500},
                    }
                ],
            }
        )
