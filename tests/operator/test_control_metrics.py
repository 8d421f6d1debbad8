"""The decisions counter's `reason` label: what stopped the policy first, else what drove it."""

from __future__ import annotations

import pytest

from carpool_operator.control_metrics import DECISION_REASONS, decision_action, decision_reason
from carpool_policy import Decision, Observation, PolicyState, PoolSpec
from carpool_policy.types import Condition


def spec(pool: dict, mode: str = "Auto") -> PoolSpec:
    pool["spec"]["scaling"]["mode"] = mode
    return PoolSpec.from_crd(pool["spec"])


def decision(replicas: int, **conditions: tuple[str, str]) -> Decision:
    defaults = {
        "MetricsAvailable": ("True", "MetricsFresh"),
        "SLAMet": ("True", "WithinBudget"),
        "CapacityLimited": ("False", "CapacitySufficient"),
    }
    defaults.update(conditions)
    return Decision(
        replicas=replicas,
        limits={},
        conditions=tuple(Condition(t, s, r, "") for t, (s, r) in defaults.items()),
        reason="",
        changed=True,
        state=PolicyState(),
        recommended_replicas=replicas,
    )


SEEN = Observation(sampled_at=1.0, available=True, desired_replicas=2, ready_replicas=2)


@pytest.mark.parametrize(
    ("replicas", "scaled", "retuned", "conditions", "expected"),
    [
        (3, True, False, {}, ("scale_up", "sla_at_risk")),
        (1, True, False, {}, ("scale_down", "load_fell")),
        (2, False, True, {}, ("retune", "load_changed")),
        (2, False, False, {}, ("hold", "steady")),
        (3, True, False, {"SLAMet": ("False", "BudgetExceeded")}, ("scale_up", "sla_missed")),
        (
            2,
            False,
            False,
            {"MetricsAvailable": ("False", "PrometheusUnavailable")},
            ("hold", "metrics_unavailable"),
        ),
        (
            3,
            True,
            False,
            {"MetricsAvailable": ("False", "SeriesMissing")},
            ("scale_up", "series_missing"),
        ),
        (
            2,
            False,
            True,
            {"CapacityLimited": ("True", "PodsUnschedulable"), "SLAMet": ("False", "X")},
            ("retune", "capacity_limited"),
        ),
    ],
)
def test_action_and_reason(pool, replicas, scaled, retuned, conditions, expected) -> None:
    made = decision(replicas, **conditions)
    action = decision_action(SEEN, made, scaled, retuned)
    reason = decision_reason(spec(pool), made, action)
    assert (action, reason) == expected
    assert reason in DECISION_REASONS


def test_recommend_mode_says_nothing_was_applied_whatever_the_sla(pool) -> None:
    made = decision(2, SLAMet=("False", "BudgetExceeded"))
    assert decision_reason(spec(pool, "Recommend"), made, "hold") == "not_auto"
