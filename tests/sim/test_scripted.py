"""The scripted controller behind the clairvoyant bound: pods asked for one start-up ahead."""

from __future__ import annotations

import pytest

from carpool_sim.controllers import Scripted
from carpool_sim.scenario import build_requests, load_pool, load_profile
from carpool_sim.sim import SimConfig, simulate

STARTUP = 45.0


@pytest.fixture
def run(pool_file, profile_file):
    requests, _ = build_requests([("chat", "poisson:rate=2,prompt=200,output=10")], None, 240.0)
    spec, profile = load_pool(pool_file), load_profile(profile_file)
    config = SimConfig(startup_seconds=STARTUP, timeline_interval_seconds=1.0)

    def go(schedule):
        result = simulate(requests, spec, profile, Scripted(schedule, 60.0, STARTUP), config)
        return {t: (desired, ready) for t, desired, ready in result.timeline}

    return go


def test_a_period_finds_its_pods_ready_when_it_starts(run):
    timeline = run([1, 3, 1, 1])
    assert timeline[60.0][1] == 3


def test_pods_are_asked_for_no_earlier_than_start_up_and_one_interval_ahead(run):
    timeline = run([1, 3, 1, 1])
    assert timeline[9.0][0] == 1
    assert timeline[10.0][0] == 3


def test_pods_go_once_no_period_ahead_needs_them(run):
    timeline = run([1, 3, 1, 1])
    assert timeline[120.0][0] == 1


def test_the_run_starts_warm_with_the_first_period_s_pods(run):
    timeline = run([2, 4, 1, 1])
    assert timeline[0.0] == (2, 2)


def test_the_last_count_holds_after_the_schedule_ends():
    assert Scripted([1, 2], 60.0, 30.0).needed(500.0, 600.0) == 2


def test_an_empty_or_zero_schedule_is_refused():
    with pytest.raises(ValueError, match="at least 1 replica"):
        Scripted([2, 0], 60.0, 30.0)
