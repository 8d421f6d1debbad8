"""Drift: an owned object lost or changed a field the operator wants."""

from __future__ import annotations

import pytest

from carpool_operator import drift

DESIRED = {"spec": {"replicas": 2, "containers": [{"image": "a", "resources": {"gpu": 1}}]}}


@pytest.mark.parametrize(
    ("case", "live", "expected"),
    [
        ("identical", DESIRED, True),
        (
            "server defaults added",
            {"spec": {"replicas": 2, "paused": False,
                      "containers": [{"image": "a", "resources": {"gpu": 1}, "tty": False}]}},
            True,
        ),
        ("quantity as a string", {"spec": {"replicas": 2, "containers": [
            {"image": "a", "resources": {"gpu": "1"}}]}}, True),
        ("field changed", {"spec": {"replicas": 3, "containers": [
            {"image": "a", "resources": {"gpu": 1}}]}}, False),
        ("field removed", {"spec": {"containers": [{"image": "a", "resources": {"gpu": 1}}]}},
         False),
        ("list item added", {"spec": {"replicas": 2, "containers": [
            {"image": "a", "resources": {"gpu": 1}}, {"image": "b"}]}}, False),
    ],
)  # fmt: skip
def test_contains(case, live, expected):
    assert drift.contains(live, DESIRED) is expected, case


def test_a_boolean_never_matches_a_number():
    assert drift.contains({"a": 1}, {"a": True}) is False
