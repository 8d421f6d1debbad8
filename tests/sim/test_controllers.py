"""The baselines follow their documented control laws."""

from __future__ import annotations

from collections import deque

import pytest

from carpool_sim.controllers import (
    Bounds,
    ControlView,
    HpaBehaviour,
    HpaGpuUtilization,
    KedaQueueLength,
    KnativeKpa,
    Static,
)
from carpool_sim.prometheus import Prometheus, Sample

BOUNDS = Bounds(1, 16, initial=1)


def view(now=100.0, desired=2, ready=2, pods=2, utilization=None, waiting=0, concurrency=()):
    prometheus = Prometheus()
    prometheus.scrape(Sample(now - 5, {}, waiting={"a": waiting}, gpu_utilization=utilization))
    return ControlView(now, desired, ready, pods, prometheus, {}, deque(concurrency))


@pytest.mark.parametrize(
    ("utilization", "expected"),
    [
        (1.0, 3),  # ceil(2 * 1.0 / 0.7)
        (0.75, 2),  # within the 10% tolerance of 70%
    ],
)
def test_hpa_gpu_scales_by_the_utilization_ratio(utilization, expected):
    hpa = HpaGpuUtilization(BOUNDS)
    assert hpa.control(view(utilization=utilization)).replicas == expected


def test_hpa_gpu_scale_down_waits_for_the_stabilization_window():
    hpa = HpaGpuUtilization(BOUNDS)
    hpa.control(view(now=10.0, utilization=0.7))
    assert hpa.control(view(now=100.0, utilization=0.35)).replicas == 2
    assert hpa.control(view(now=311.0, utilization=0.35)).replicas == 1


def test_hpa_scale_up_is_limited_to_four_pods_or_double_per_sync():
    assert HpaBehaviour(BOUNDS).apply(0.0, current=2, recommended=15) == 6
    assert HpaBehaviour(BOUNDS).apply(0.0, current=6, recommended=15) == 12


def test_hpa_scales_down_to_the_highest_recommendation_of_the_last_300_seconds():
    behaviour = HpaBehaviour(BOUNDS)
    behaviour.apply(10.0, current=8, recommended=8)
    assert behaviour.apply(309.0, current=8, recommended=2) == 8
    assert behaviour.apply(311.0, current=8, recommended=2) == 2


def test_hpa_starts_with_the_initial_replicas_in_its_window():
    behaviour = HpaBehaviour(Bounds(1, 16, initial=6))
    assert behaviour.apply(15.0, current=6, recommended=1) == 6


def test_keda_asks_for_total_waiting_over_the_threshold():
    keda = KedaQueueLength(BOUNDS, threshold=10)
    assert keda.control(view(waiting=35)).replicas == 4


def test_kpa_follows_the_stable_window_when_calm():
    samples = [(t, 140.0) for t in range(41, 101)]  # 2 pods' worth at 70 per pod
    kpa = KnativeKpa(BOUNDS)
    assert kpa.control(view(concurrency=samples)).replicas == 2


def test_kpa_panics_when_the_panic_window_doubles_the_ready_pods():
    calm = [(t, 70.0) for t in range(41, 95)]
    burst = [(t, 600.0) for t in range(95, 101)]
    kpa = KnativeKpa(BOUNDS)
    action = kpa.control(view(desired=1, ready=1, pods=1, concurrency=calm + burst))
    assert action.replicas == 9  # ceil(600 / 70), not the stable window's average
    assert "panic" in action.reason


def test_kpa_does_not_scale_down_while_panicking():
    kpa = KnativeKpa(BOUNDS)
    burst = [(t, 600.0) for t in range(95, 101)]
    kpa.control(view(desired=1, ready=1, pods=1, concurrency=burst))
    quiet = [(t, 0.0) for t in range(101, 131)]
    assert kpa.control(view(now=130.0, desired=9, ready=9, pods=9, concurrency=quiet)).replicas == 9


def test_static_holds_its_replicas():
    assert Static(7).control(view(utilization=0.0)).replicas == 7
