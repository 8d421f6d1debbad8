"""Synthetic length spreads (lognormal, Pareto) and rate scaling of patterns."""

from __future__ import annotations

import numpy as np
import pytest

from carpool_sim.synthetic import parse_pattern
from carpool_sim.trace import TraceError


def prompts(text: str, seconds: float = 4000.0, seed: int = 5) -> np.ndarray:
    trace = parse_pattern(text).generate("a", seconds, np.random.default_rng(seed))
    return np.array([r.prompt_tokens for r in trace], dtype=float)


@pytest.mark.parametrize("spread", ["lengths=lognormal,sigma=1", "lengths=pareto,alpha=2.5"])
def test_heavy_tailed_lengths_keep_the_mean(spread):
    lengths = prompts(f"poisson:rate=5,prompt=2000,{spread}")
    assert lengths.mean() == pytest.approx(2000, rel=0.06)


def test_lognormal_has_a_tail_uniform_lengths_lack():
    tail = prompts("poisson:rate=5,prompt=2000,lengths=lognormal,sigma=1")
    # sigma = 1: the p99 is exp(2.33 - 0.5) = 6.2x the mean; uniform lengths stop at 2x.
    assert np.percentile(tail, 99) / tail.mean() == pytest.approx(6.2, rel=0.15)


def test_pareto_tail_thickens_as_alpha_falls_towards_one():
    thin = prompts("poisson:rate=5,prompt=2000,lengths=pareto,alpha=4")
    thick = prompts("poisson:rate=5,prompt=2000,lengths=pareto,alpha=1.5")
    assert np.percentile(thick, 99.9) > 2 * np.percentile(thin, 99.9)


def test_pareto_lengths_never_fall_below_the_scale():
    lengths = prompts("poisson:rate=5,prompt=3000,lengths=pareto,alpha=1.5")
    # Pareto I: x >= x_m = mean * (alpha - 1) / alpha = 1000.
    assert lengths.min() >= 1000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("poisson:rate=1,lengths=zipf", "lengths='zipf'"),
        ("poisson:rate=1,sigma=2", "sigma= applies to lengths=lognormal"),
        ("poisson:rate=1,lengths=lognormal,jitter=0.2", "jitter= applies to lengths=uniform"),
        ("poisson:rate=1,lengths=pareto,alpha=1", "alpha must be > 1"),
        ("poisson:rate=1,lengths=lognormal,sigma=0", "sigma must be > 0"),
    ],
)
def test_bad_spreads_say_what_is_wrong(text, message):
    with pytest.raises(TraceError, match=message):
        parse_pattern(text)


def test_scaled_pattern_multiplies_its_arrival_rate():
    base = parse_pattern("bursts:rate=1,burst_rate=4,burst_seconds=10,every=100")
    single = base.generate("a", 5000.0, np.random.default_rng(1))
    triple = base.scaled(3.0).generate("a", 5000.0, np.random.default_rng(1))
    assert len(triple) / len(single) == pytest.approx(3.0, rel=0.05)


def test_scaled_pattern_keeps_its_lengths():
    base = parse_pattern("poisson:rate=2,prompt=700,output=90,lengths=lognormal,sigma=0.5")
    scaled = base.scaled(2.5)
    assert (scaled.lengths, scaled.params["prompt"], scaled.params["output"]) == (
        "lognormal",
        700.0,
        90.0,
    )
