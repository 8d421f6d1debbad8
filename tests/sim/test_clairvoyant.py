"""The clairvoyant bound: what no replica count serves, the per-minute plan, the checked search."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from carpool_policy import PoolSpec
from carpool_sim import clairvoyant
from carpool_sim.controllers import Static
from carpool_sim.report import attained_mask
from carpool_sim.scenario import Scenario, build_requests, load_profile
from carpool_sim.sim import SimConfig, simulate
from carpool_sim.trace import Request

from .conftest import POOL_YAML


def spec_with_budget(milliseconds: int) -> PoolSpec:
    budget = f"ttftP95Milliseconds: {milliseconds}"
    manifest = yaml.safe_load(POOL_YAML.replace("ttftP95Milliseconds: 500", budget))
    return PoolSpec.from_crd(manifest["spec"])


def table(*rows: list[int]) -> dict[int, np.ndarray]:
    """Misses by replica count (1..len) for one endpoint: rows[m][n - 1] for minute m."""
    return {n: np.array([[row[n - 1] for row in rows]]) for n in range(1, len(rows[0]) + 1)}


def test_plan_steps_each_minute_down_as_far_as_the_budget_allows():
    misses = table([0, 0, 0, 0], [50, 20, 5, 0], [10, 0, 0, 0])
    schedule = clairvoyant.plan([1, 2, 3, 4], misses.__getitem__, np.array([6]), 4)
    assert schedule == [1, 3, 2]


def test_plan_spends_the_budget_where_a_replica_costs_fewest_misses():
    misses = table([9, 9, 3, 0], [9, 9, 2, 0])
    schedule = clairvoyant.plan([1, 2, 3, 4], misses.__getitem__, np.array([2]), 4)
    assert schedule == [4, 3]


def test_plan_weighs_each_endpoint_by_its_own_budget():
    # Endpoint A may miss 2, B 100. Stepping minute 0 down costs A 2 misses: all of its budget.
    # Minute 1 costs A 1 and B 40: 0.9 of a budget in all, the cheaper step, and then minute 0
    # no longer fits. Counting misses alike (2 against 41) would step minute 0 instead.
    misses = {1: np.array([[2, 1], [0, 40]]), 2: np.array([[0, 0], [0, 0]])}
    schedule = clairvoyant.plan([1, 2], misses.__getitem__, np.array([2, 100]), 2)
    assert schedule == [2, 1]


def test_allowed_misses_are_what_still_attains_the_target():
    allowed = clairvoyant.allowed_misses(np.array([1000, 999, 0]), np.array([0.99, 0.99, 0.99]))
    assert allowed.tolist() == [10, 9, 0]


@pytest.fixture
def profile(profile_file):
    return load_profile(profile_file)


def test_a_prompt_whose_prefill_alone_breaks_the_budget_is_unreachable(profile):
    # The test profile prefills about 20k tokens a second: 1,000 tokens fit 100 ms, 3,000 not.
    requests = [Request("chat", 0.0, 1000, 5), Request("chat", 1.0, 3000, 5)]
    scenario = Scenario(spec_with_budget(100), profile, requests, 60.0)
    assert clairvoyant.reachable(scenario).tolist() == [True, False]


def test_a_request_longer_than_the_context_is_unreachable_without_an_sla(profile):
    requests = [Request("batch", 0.0, 3000, 1000), Request("batch", 1.0, 3000, 1097)]
    scenario = Scenario(spec_with_budget(500), profile, requests, 60.0)
    assert clairvoyant.reachable(scenario).tolist() == [True, False]


@pytest.fixture
def bursty(profile):
    sources = [("chat", "bursts:rate=2,burst_rate=20,burst_seconds=10,every=180,prompt=1500,"
                        "output=20,jitter=0.5")]  # fmt: skip
    requests, duration = build_requests(sources, duration_seconds=540.0, seed=4)
    return Scenario(spec_with_budget(500), profile, requests, duration)


def test_search_returns_a_checked_schedule_cheaper_than_static(bursty):
    config = SimConfig()
    statics = {n: simulate(bursty.requests, bursty.spec, bursty.profile, Static(n), config)
               for n in range(1, 5)}  # fmt: skip
    minutes = clairvoyant.minutes_of(bursty)
    targets = np.array([0.99, 0.99])
    counts = np.array([len(bursty.requests), 0])

    def reaches(result) -> bool:
        return attained_mask(result, bursty.spec).sum() >= 0.99 * counts[0]

    count = min(n for n, r in statics.items() if reaches(r))
    bound = clairvoyant.search(
        bursty, config,
        lambda n: clairvoyant.minute_misses(statics[n], bursty, minutes),
        count, statics[count].gpu_seconds, targets, [1, 2, 3, 4], 4,
    )  # fmt: skip
    assert bound.planned
    assert reaches(bound.result)
    assert bound.result.gpu_seconds < statics[count].gpu_seconds
