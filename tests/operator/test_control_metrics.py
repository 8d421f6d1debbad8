"""The decisions counter's `reason` label: what stopped the policy first, else what drove it."""

from __future__ import annotations

from dataclasses import replace

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


def _gauge(name: str, **labels: str) -> float | None:
    from carpool_operator.metrics import REGISTRY

    return REGISTRY.get_sample_value(name, labels)


@pytest.mark.parametrize("reason", ["NoSamples", "MetricsStale", "MissingScrapeLabels"])
def test_metrics_available_gauge_reads_0_whenever_the_condition_is_false(pool, reason) -> None:
    from carpool_operator.control_metrics import record

    # Prometheus answered (the observation is "available"), but the pool holds: the gauge
    # follows the condition the pool shows, not whether Prometheus answered.
    shown = (Condition("MetricsAvailable", "False", reason, "holding"),)
    record("g", reason.lower(), spec(pool), SEEN, decision(2), False, False, shown=shown)
    labels = {"namespace": "g", "pool": reason.lower()}
    assert _gauge("carpool_pool_metrics_available", **labels) == 0
    assert _gauge("carpool_pool_metrics_unavailable_reason", **labels, reason=reason) == 1


def test_the_reason_series_goes_when_metrics_return(pool) -> None:
    from carpool_operator.control_metrics import record

    labels = {"namespace": "g", "pool": "back"}
    down = (Condition("MetricsAvailable", "False", "NoSamples", "holding"),)
    up = (Condition("MetricsAvailable", "True", "MetricsFresh", "all series present"),)
    record("g", "back", spec(pool), SEEN, decision(2), False, False, shown=down)
    record("g", "back", spec(pool), SEEN, decision(2), False, False, shown=up)
    assert _gauge("carpool_pool_metrics_available", **labels) == 1
    assert _gauge("carpool_pool_metrics_unavailable_reason", **labels, reason="NoSamples") is None


def test_the_profile_gauge_follows_profile_loaded_and_goes_without_a_profile(pool) -> None:
    from carpool_operator.control_metrics import record

    labels = {"namespace": "g", "pool": "prof"}
    fresh = Condition("MetricsAvailable", "True", "MetricsFresh", "")
    bad = (fresh, Condition("ProfileLoaded", "False", "ProfileInvalid", ""))
    record("g", "prof", spec(pool), SEEN, decision(2), False, False, shown=bad)
    assert _gauge("carpool_pool_profile_loaded", **labels) == 0
    record("g", "prof", spec(pool), SEEN, decision(2), False, False, shown=(fresh,))
    assert _gauge("carpool_pool_profile_loaded", **labels) is None


def test_each_sla_line_is_exported_while_the_spec_sets_it(pool) -> None:
    from carpool_operator.control_metrics import record

    labels = {"namespace": "g", "pool": "lines", "endpoint": "inline-completion"}
    fresh = (Condition("MetricsAvailable", "True", "MetricsFresh", ""),)
    pool["spec"]["endpoints"][0]["sla"] = {
        "ttftP95Milliseconds": 300,
        "queueWaitP95Milliseconds": 80,
    }
    record("g", "lines", spec(pool), SEEN, decision(2), False, False, shown=fresh)
    assert _gauge("carpool_endpoint_sla_ttft_p95_seconds", **labels) == 0.3
    assert _gauge("carpool_endpoint_sla_queue_wait_p95_seconds", **labels) == 0.08
    # The burn-rate alerts compare against these lines: one taken out of the spec goes.
    pool["spec"]["endpoints"][0]["sla"] = {"queueWaitP95Milliseconds": 80}
    record("g", "lines", spec(pool), SEEN, decision(2), False, False, shown=fresh)
    assert _gauge("carpool_endpoint_sla_ttft_p95_seconds", **labels) is None
    assert _gauge("carpool_endpoint_sla_queue_wait_p95_seconds", **labels) == 0.08
    offline = {**labels, "endpoint": "nightly-labeling"}
    assert _gauge("carpool_endpoint_sla_queue_wait_p95_seconds", **offline) is None


def test_forget_drops_every_series_of_one_pool_and_only_its(pool) -> None:
    from carpool_operator.control_metrics import count_error, forget, record
    from carpool_operator.metrics import REGISTRY

    limited = replace(SEEN, pending_unschedulable_replicas=1)
    fresh = (Condition("MetricsAvailable", "True", "MetricsFresh", ""),)
    for name in ("gone", "kept"):
        record("g", name, spec(pool), limited, decision(2), True, False, shown=fresh)
        count_error("g", name)
    assert _gauge("carpool_pool_capacity_limited", namespace="g", pool="gone") == 1
    forget("g", "gone")
    left = {
        (sample.name, sample.labels.get("pool"))
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.labels.get("namespace") == "g"
    }
    assert not [s for s in left if s[1] == "gone"]
    assert ("carpool_pool_capacity_limited", "kept") in left
    assert ("carpool_control_errors_total", "kept") in left


def test_the_ledger_exports_cost_per_endpoint_and_drops_it_when_unknown(pool) -> None:
    from carpool_operator.control_metrics import record

    labels = {"namespace": "g", "pool": "cost", "endpoint": "inline-completion"}
    fresh = (Condition("MetricsAvailable", "True", "MetricsFresh", ""),)
    costs = {"inline-completion": 1.25}
    record("g", "cost", spec(pool), SEEN, decision(2), False, False, shown=fresh, gpus=2,
           gpu_hour_price=3.0, costs=costs)  # fmt: skip
    assert _gauge("carpool_endpoint_cost_per_million_tokens", **labels) == 1.25
    assert _gauge("carpool_pool_gpus", namespace="g", pool="cost") == 2
    record("g", "cost", spec(pool), SEEN, decision(2), False, False, shown=fresh, gpus=2)
    assert _gauge("carpool_endpoint_cost_per_million_tokens", **labels) is None
    assert _gauge("carpool_pool_gpu_hour_price", namespace="g", pool="cost") is None


def test_every_rule_the_policy_names_is_a_decision_reason_and_each_names_one_thing():
    from carpool_policy.explain import RULES

    assert set(RULES) <= set(DECISION_REASONS)
    assert len(set(DECISION_REASONS)) == len(DECISION_REASONS)  # no driver named like a rule


def test_the_first_rule_a_decision_names_is_its_reason(pool):
    named = replace(decision(2), rules=("queue_within_budget", "stabilizing"))
    assert decision_reason(spec(pool), named, "hold") == "queue_within_budget"


def test_the_needed_replicas_are_shown_beside_desired_and_go_on_a_hold(pool) -> None:
    from carpool_operator.control_metrics import record

    labels = {"namespace": "g", "pool": "need"}
    fresh = (Condition("MetricsAvailable", "True", "MetricsFresh", ""),)
    held_up = replace(decision(5), needed_replicas=3)
    record("g", "need", spec(pool), SEEN, held_up, False, False, shown=fresh)
    assert _gauge("carpool_pool_replicas", **labels, state="desired") == 5
    assert _gauge("carpool_pool_replicas", **labels, state="needed") == 3
    record("g", "need", spec(pool), SEEN, decision(5), False, False, shown=fresh)
    assert _gauge("carpool_pool_replicas", **labels, state="needed") is None


def test_the_queue_budget_gauge_is_set_once_known_and_kept_while_unknown(pool) -> None:
    from carpool_operator.control_metrics import record

    labels = {"namespace": "g", "pool": "queue", "endpoint": "inline-completion"}
    fresh = (Condition("MetricsAvailable", "True", "MetricsFresh", ""),)
    unknown = replace(decision(2), queue_budget_seconds={})
    record("g", "queue", spec(pool), SEEN, unknown, False, False, shown=fresh)
    assert _gauge("carpool_endpoint_queue_budget_seconds", **labels) is None
    known = {"inline-completion": 0.65}
    judged = replace(decision(2), queue_budget_seconds=known)
    record("g", "queue", spec(pool), SEEN, judged, False, False, shown=fresh)
    assert _gauge("carpool_endpoint_queue_budget_seconds", **labels) == 0.65
    record("g", "queue", spec(pool), SEEN, unknown, False, False, shown=fresh)
    assert _gauge("carpool_endpoint_queue_budget_seconds", **labels) == 0.65
