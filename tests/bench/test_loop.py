"""The simulator's prediction of a closed loop, and the loop's own figures in the same shape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carpool_bench import loop
from carpool_bench.replay import Arrival, Outcome
from carpool_replica.profile import Profile

PROFILE = Profile.from_dict(
    json.loads(
        (Path(__file__).resolve().parents[2] / "profiles" / "h200-bench-8b.json").read_text()
    )
)
SPEC = {
    "replicas": {"min": 1, "max": 8},
    "endpoints": [
        {
            "name": "chat",
            "priority": 100,
            "sla": {"ttftP95Milliseconds": 1000},
            "batching": {"maxBatchSize": {"min": 1, "max": 48}},
        }
    ],
    "scaling": {"intervalSeconds": 5, "scaleDownStabilizationSeconds": 30},
}


def test_replica_minutes_integrate_the_desired_replicas_as_a_step_function():
    samples = [(0.0, 1), (10.0, 3), (20.0, 1)]
    assert loop.measured([], samples, until_seconds=30.0)["replica_minutes"] == pytest.approx(
        50.0 / 60.0, abs=0.01
    )


def test_measured_p95_counts_only_requests_sent_before_the_end():
    early = [Outcome(Arrival(float(i), "chat", 100, 4), float(i), float(i) + 0.1, float(i) + 1,
                     200) for i in range(20)]  # fmt: skip
    late = Outcome(Arrival(50.0, "chat", 100, 4), 50.0, 59.0, 60.0, 200)
    figures = loop.measured([*early, late], [(0.0, 1)], until_seconds=30.0)
    assert figures["endpoints"]["chat"] == {"requests": 20, "ttft_p95_seconds": 0.1}


def steady(rate: float, seconds: float) -> list[Arrival]:
    return [Arrival(i / rate, "chat", 2000, 24) for i in range(int(rate * seconds))]


def predict(arrivals: list[Arrival]) -> dict:
    return loop.predict(arrivals, SPEC, PROFILE, startup_seconds=6.0, scrape_interval_seconds=2.0,
                        rate_window_seconds=20.0, until_seconds=120.0)  # fmt: skip


def test_the_prediction_spends_more_replica_minutes_on_more_load():
    light, heavy = predict(steady(2.0, 120)), predict(steady(30.0, 120))
    assert light["replica_minutes"] >= 2.0 - 0.05  # never below min replicas for two minutes
    assert heavy["replica_minutes"] > 2 * light["replica_minutes"]
    assert 0.9 * 3600 <= heavy["endpoints"]["chat"]["requests"] <= 3600


def test_startup_is_the_median_lag_from_a_rise_in_desired_to_ready():
    samples = [(0.0, 1, 1), (1.0, 3, 1), (5.0, 3, 2), (7.0, 3, 3), (10.0, 4, 3), (13.0, 4, 4)]
    assert loop.startup_seconds(samples) == pytest.approx((6.0 + 3.0) / 2)
    assert loop.startup_seconds([(0.0, 1, 1), (1.0, 1, 1)]) is None
