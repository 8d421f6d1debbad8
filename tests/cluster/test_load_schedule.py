"""Load schedules built from the shared trace: bounded, shaped and deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest

from carpool_cluster.load import poisson, schedule_from_trace

TRACE = Path(__file__).resolve().parents[2] / "traces" / "azure-llm-2023-code.csv"


def rate(arrivals, start: float, end: float) -> float:
    return sum(1 for a in arrivals if start <= a.at_seconds < end) / (end - start)


@pytest.mark.parametrize("timing", ["trace", "poisson"])
def test_a_burst_multiplies_the_arrival_rate_in_its_span(timing: str) -> None:
    common = {"start_seconds": 1080, "duration_seconds": 150, "timing": timing}
    plain = schedule_from_trace(TRACE, "chat", **common)
    bursty = schedule_from_trace(TRACE, "chat", burst=(50, 100, 4.0), **common)
    assert 3.0 < rate(bursty, 50, 100) / rate(plain, 50, 100) < 5.0
    assert rate(bursty, 100, 150) == pytest.approx(rate(plain, 100, 150), rel=0.25)


def test_arrivals_stay_inside_the_slice_and_are_ordered() -> None:
    arrivals = schedule_from_trace(TRACE, "chat", start_seconds=600, duration_seconds=60)
    times = [a.at_seconds for a in arrivals]
    assert times == sorted(times)
    assert all(0 <= t < 60.1 for t in times)


def test_request_sizes_are_scaled_and_capped_for_a_small_model() -> None:
    arrivals = schedule_from_trace(
        TRACE,
        "chat",
        start_seconds=0,
        duration_seconds=600,
        max_prompt_tokens=100,
        max_output_tokens=8,
    )
    assert arrivals
    assert all(4 <= a.prompt_tokens <= 100 and 1 <= a.max_tokens <= 8 for a in arrivals)


def test_the_same_seed_gives_the_same_schedule() -> None:
    first = schedule_from_trace(
        TRACE, "chat", start_seconds=0, duration_seconds=120, timing="poisson", seed=3
    )
    second = schedule_from_trace(
        TRACE, "chat", start_seconds=0, duration_seconds=120, timing="poisson", seed=3
    )
    assert first == second


def test_an_empty_slice_is_refused_with_its_bounds() -> None:
    with pytest.raises(ValueError, match="no requests"):
        schedule_from_trace(TRACE, "chat", start_seconds=60, duration_seconds=1)


def test_poisson_stream_matches_its_rate() -> None:
    arrivals = poisson("batch", 20.0, 100.0, prompt_tokens=10, max_tokens=5)
    assert 1700 < len(arrivals) < 2300
