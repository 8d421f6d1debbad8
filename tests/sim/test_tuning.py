"""The baselines' sweeps: the laxest setting that reaches the target, found by bisection."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from carpool_sim.tuning import SWEEPS, cheapest, sweep

VALUES = (1, 2, 3, 4, 5, 6, 7, 8, 9)


@dataclass
class Fake:
    gpu_hours: float
    reached: bool
    margin: float


def runner(reaching_up_to: int, log: list[float]):
    """Settings up to `reaching_up_to` reach the target; laxer ones cost less."""

    def run(value: float) -> Fake:
        log.append(value)
        reached = value <= reaching_up_to
        return Fake(100.0 - value, reached, 0.01 if reached else -0.01 * value)

    return run


@pytest.mark.parametrize("boundary", [1, 3, 5, 6, 9])
def test_sweep_finds_the_laxest_setting_that_reaches(boundary):
    ran = sweep(VALUES, 5, runner(boundary, []))
    assert cheapest([o for _, o in ran]).gpu_hours == 100.0 - boundary


def test_sweep_runs_about_log2_settings_plus_the_default():
    log: list[float] = []
    sweep(VALUES, 5, runner(7, log))
    assert len(log) <= 4


def test_sweep_runs_the_default_first():
    log: list[float] = []
    ran = sweep(VALUES, 5, runner(2, log))
    assert log[0] == 5 and ran[0][0] == 5


def test_when_nothing_reaches_the_soonest_to_scale_out_is_tried():
    ran = sweep(VALUES, 5, runner(0, []))
    assert {value for value, _ in ran} == {5, 1}


def test_cheapest_prefers_fewer_gpu_hours_among_those_that_reach():
    outcomes = [Fake(10.0, True, 0.0), Fake(5.0, False, -0.1), Fake(8.0, True, 0.01)]
    assert cheapest(outcomes) is outcomes[2]


def test_cheapest_without_a_reaching_setting_takes_the_closest():
    outcomes = [Fake(10.0, False, -0.02), Fake(5.0, False, -0.3), Fake(12.0, False, -0.02)]
    assert cheapest(outcomes) is outcomes[0]


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_every_sweep_holds_its_documented_default_in_order(name):
    knob = SWEEPS[name]
    assert knob.default in knob.values
    assert list(knob.values) == sorted(knob.values)
