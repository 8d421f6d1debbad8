"""PolicyState survives a round trip through JSON and tolerates a damaged annotation."""

from __future__ import annotations

import json

import pytest

from carpool_policy import PolicyState
from carpool_policy.state import OperatingPoint

FULL = PolicyState(
    recommendations=((100.0, 3), (115.0, 4)),
    last_scale_up_at=115.0,
    last_scale_down_at=None,
    last_observed_at=115.0,
    service_times={"inline": ((1.0, 0.25), (16.0, 0.3))},
    token_means={"inline": (2048.0, 28.0)},
    sustained_rates={"inline": ((60.0, 4.5), (120.0, 5.25))},
    anchor_scales={"inline": (115.0, 2.5)},
    operating_points=(OperatingPoint(100.0, 4, {"inline": 5.5}),),
    settled_since=100.0,
)


def test_state_round_trips_through_json():
    assert PolicyState.from_dict(json.loads(json.dumps(FULL.to_dict()))) == FULL


def test_an_edited_infinite_sustained_rate_is_dropped_not_planned_for():
    edited = FULL.to_dict()
    edited["sustainedRates"] = {"inline": [[60.0, "inf"], [120.0, 5.25]]}
    assert PolicyState.from_dict(edited).sustained_rates == {"inline": ((120.0, 5.25),)}


def test_an_edited_anchor_scale_that_is_no_ratio_of_delays_is_dropped():
    edited = FULL.to_dict()
    edited["anchorScales"] = {"inline": [115.0, "inf"], "offline": [115.0, -1.0]}
    assert PolicyState.from_dict(edited).anchor_scales == {}


def test_an_edited_operating_point_with_a_rate_that_is_no_rate_is_dropped():
    edited = FULL.to_dict()
    edited["operatingPoints"] = [
        {"at": 100.0, "replicas": 4, "rates": {"inline": "inf"}},
        {"at": 100.0, "replicas": 4, "rates": {"inline": -1.0}},
        {"at": 100.0, "replicas": 0, "rates": {"inline": 1.0}},
        {"at": 115.0, "replicas": 5, "rates": {"inline": 6.0}},
    ]
    kept = PolicyState.from_dict(edited).operating_points
    assert kept == (OperatingPoint(115.0, 5, {"inline": 6.0}),)


@pytest.mark.parametrize(
    "damaged",
    [None, "text", {}, {"schema": "carpool.dev/policy-state/v1", "recommendations": [["x"]]}],
)
def test_unreadable_state_becomes_the_empty_state(damaged):
    assert PolicyState.from_dict(damaged) == PolicyState()
