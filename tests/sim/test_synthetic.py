"""Synthetic arrival patterns: parsing, rates and determinism."""

from __future__ import annotations

import numpy as np
import pytest

from carpool_sim.synthetic import parse_pattern
from carpool_sim.trace import TraceError


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("uniform:rate=1", "unknown pattern"),
        ("poisson:prompt=10", "rate= is required"),
        ("poisson:rate=1,speed=2", "unknown parameter"),
        ("poisson:rate=fast", "not a number"),
        ("diurnal:rate=1,amplitude=2", "amplitude must be in"),
        ("poisson:rate=1,jitter=1.5", "jitter must be in"),
    ],
)
def test_bad_patterns_say_what_is_wrong(text, message):
    with pytest.raises(TraceError, match=message):
        parse_pattern(text)


def test_poisson_count_matches_its_rate():
    trace = parse_pattern("poisson:rate=5").generate("a", 2000.0, np.random.default_rng(1))
    assert len(trace) == pytest.approx(10_000, rel=0.05)


def test_same_seed_same_trace():
    pattern = parse_pattern("diurnal:rate=3,amplitude=0.8,period=600,jitter=0.3")
    first = pattern.generate("a", 600.0, np.random.default_rng(7))
    second = pattern.generate("a", 600.0, np.random.default_rng(7))
    assert first == second


def test_bursts_concentrate_arrivals_inside_the_burst():
    pattern = parse_pattern("bursts:rate=1,burst_rate=9,burst_seconds=10,every=100")
    trace = pattern.generate("a", 10_000.0, np.random.default_rng(3))
    inside = sum(1 for r in trace if r.arrival_seconds % 100 < 10)
    # Inside: 10 req/s over 10% of the time; outside: 1 req/s over 90%.
    assert inside / len(trace) == pytest.approx(100 / 190, abs=0.03)


def test_lengths_stay_within_the_jitter():
    trace = parse_pattern("poisson:rate=5,prompt=1000,output=100,jitter=0.2").generate(
        "a", 100.0, np.random.default_rng(2)
    )
    assert all(800 <= r.prompt_tokens <= 1200 and 80 <= r.output_tokens <= 120 for r in trace)
