"""The queueing formulas against known closed forms."""

from __future__ import annotations

import math

import pytest

from carpool_policy.queueing import (
    combine_quantiles,
    erlang_c,
    exponential_tail_quantile,
    priority_mean_wait,
    slot_wait_quantile,
)


def test_erlang_c_with_one_server_is_the_utilization():
    assert erlang_c(1, 0.6) == pytest.approx(0.6)


def test_erlang_c_matches_the_textbook_value_for_two_servers():
    # M/M/2 at a = 1 Erlang: C = 1/3.
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)


def test_mm1_p95_wait_matches_the_exact_quantile():
    rho, service = 0.8, 0.1
    mean_wait = rho * service / (1 - rho)
    exact = service / (1 - rho) * math.log(rho / 0.05)
    assert exponential_tail_quantile(mean_wait, rho, 0.95) == pytest.approx(exact)


def test_rarely_busy_server_has_no_p95_wait():
    assert exponential_tail_quantile(0.01, 0.04, 0.95) == 0.0


def test_overloaded_priority_class_waits_forever():
    assert priority_mean_wait(0.1, 0.5, 1.0) == math.inf


def test_lower_priority_class_waits_longer_than_higher():
    high = priority_mean_wait(0.05, 0.0, 0.4)
    low = priority_mean_wait(0.05, 0.4, 0.8)
    assert low > high


def test_full_batch_slots_wait_forever():
    assert slot_wait_quantile(4, 4.0, 1.0, 0.99) == math.inf


def test_quantiles_of_independent_parts_combine_below_their_sum():
    combined = combine_quantiles([(1.0, 2.0), (1.0, 2.0)])
    assert 3.0 < combined < 4.0
