"""A step up goes no further than the pool's recent operating points scaled to the rates now."""

from __future__ import annotations

import dataclasses

from carpool_policy import DEFAULT_TUNING, PolicyState, decide
from carpool_policy.operating_points import remembered, step_up_bound
from carpool_policy.state import OperatingPoint


def test_the_bound_is_the_smallest_remembered_count_grown_with_the_worst_endpoints_rate():
    points = [
        OperatingPoint(0.0, 9, {"chat": 2.0, "drafts": 1.0}),
        OperatingPoint(0.0, 12, {"chat": 4.0, "drafts": 1.0}),
    ]
    # chat 1.5x the first point's rate, drafts 1.2x: 9 * 1.5 = 13.5 -> 14; the second: 12 * 1.2.
    assert step_up_bound(points, {"chat": 3.0, "drafts": 1.2}, current=7) == 14
    assert step_up_bound(points, {"chat": 2.0, "drafts": 1.0}, current=7) == 9


def test_the_bound_adds_at_least_one_replica():
    points = [OperatingPoint(0.0, 5, {"chat": 2.0})]
    assert step_up_bound(points, {"chat": 1.0}, current=7) == 8


def test_a_point_that_saw_none_of_an_endpoints_traffic_says_nothing_of_it():
    points = [OperatingPoint(0.0, 5, {"chat": 2.0, "drafts": 0.0})]
    assert step_up_bound(points, {"chat": 2.0, "drafts": 0.5}, current=4) is None
    assert step_up_bound(points, {"chat": 2.0, "drafts": 0.0}, current=4) == 5
    assert step_up_bound([], {"chat": 2.0}, current=4) is None
    assert step_up_bound(points, {"chat": 0.0}, current=4) is None


def test_points_are_remembered_for_their_memory_only():
    now = 10_000.0
    memory = DEFAULT_TUNING.operating_point_memory_seconds
    old, recent = OperatingPoint(now - memory - 1, 9, {}), OperatingPoint(now - 60, 9, {})
    assert remembered([old, recent], now, DEFAULT_TUNING) == (recent,)


def cliff(w, points: tuple[OperatingPoint, ...]):
    """7 pods, 3 req/s of 2k-token prompts: the queue delay p95 reads 2 s of 1.1 s."""
    observation = w.observe(7, w.traffic(rate=30.0, ttft=2.4, queue=2.0, service=0.4))
    service = {"inline": tuple((w.NOW - 60 - 15 * k, 0.4) for k in range(3))}
    state = PolicyState(service_times=service, last_observed_at=w.NOW - 15, operating_points=points)
    return decide(observation, w.spec(), state, w.NOW, w.profile)


def test_a_breach_steps_up_no_further_than_a_recent_count_that_served_the_rate(w):
    # Five minutes ago 9 pods served the same 30 req/s within budget; the breach (2 s of 1.1 s)
    # on 7 would have the pool grow to 14 in proportion to its overshoot.
    served = (OperatingPoint(w.NOW - 300, 9, {"inline": 30.0}),)
    decision = cliff(w, served)
    assert decision.replicas == 9
    assert "operating_point" in decision.rules
    assert "step up to 9 replicas, not 1" in decision.reason
    assert cliff(w, ()).replicas > 9


def test_a_count_measured_at_a_lower_rate_bounds_the_step_in_proportion(w):
    served = (OperatingPoint(w.NOW - 300, 8, {"inline": 20.0}),)
    assert cliff(w, served).needed_replicas == 12  # 8 * 30 / 20 (4 of them now: maxScaleUpStep)


WINDOW = DEFAULT_TUNING.rate_window_seconds


def test_a_pool_within_budget_with_every_pod_ready_remembers_its_count(w):
    observation = w.observe(6, w.traffic(rate=30.0, ttft=0.6, queue=0.5, service=0.4))
    settled = PolicyState(settled_since=w.NOW - WINDOW)
    decision = decide(observation, w.spec(), settled, w.NOW, w.profile)
    (point,) = decision.state.operating_points
    assert point == OperatingPoint(w.NOW, 6, {"inline": 30.0})


def test_a_count_that_has_not_served_a_whole_rate_window_is_not_remembered(w):
    # Stepped down to 6 a moment ago: the quiet queue was measured mostly on the pods before.
    observation = w.observe(6, w.traffic(rate=30.0, ttft=0.6, queue=0.5, service=0.4))
    stepped = PolicyState(settled_since=w.NOW - 600, last_scale_down_at=w.NOW - 15)
    decision = decide(observation, w.spec(), stepped, w.NOW, w.profile)
    assert decision.state.operating_points == ()
    assert decision.state.settled_since == w.NOW
    fresh = dataclasses.replace(observation, sampled_at=w.NOW + WINDOW - 5)
    later = decide(fresh, w.spec(), decision.state, w.NOW + WINDOW, w.profile)
    assert [p.replicas for p in later.state.operating_points] == [6]


def test_no_point_is_remembered_while_pods_start_or_over_the_headroom(w):
    for observation in (
        w.observe(6, w.traffic(rate=30.0, ttft=0.6, queue=0.5, service=0.4), ready=5),
        w.observe(6, w.traffic(rate=30.0, ttft=1.4, queue=1.0, service=0.4)),  # 91% of 1.1 s
        w.observe(
            6,
            w.traffic(rate=30.0, ttft=0.6, queue=0.5, service=0.4),
            offline=dataclasses.replace(
                w.traffic(rate=0.5, ttft=None), rejected_rate_per_second=0.2
            ),
        ),
    ):
        settled = PolicyState(settled_since=w.NOW - WINDOW)
        decision = decide(observation, w.spec(), settled, w.NOW, w.profile)
        assert decision.state.operating_points == ()
