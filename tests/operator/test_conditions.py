"""Conditions per the API conventions: transition times, reasons, and the first visit."""

from __future__ import annotations

import pytest

from carpool_operator import conditions
from carpool_operator.conditions import Condition


def test_transition_time_stays_while_the_status_stays():
    first = conditions.set_condition([], Condition("Ready", "False", "A", "m1"), 1, "T1")
    second = conditions.set_condition(first, Condition("Ready", "False", "B", "m2"), 2, "T2")
    (ready,) = second
    assert (ready["lastTransitionTime"], ready["reason"], ready["observedGeneration"]) == (
        "T1",
        "B",
        2,
    )


def test_transition_time_moves_when_the_status_changes():
    first = conditions.set_condition([], Condition("Ready", "False", "A", "m"), 1, "T1")
    (ready,) = conditions.set_condition(first, Condition("Ready", "True", "B", "m"), 1, "T2")
    assert ready["lastTransitionTime"] == "T2"


def test_other_conditions_are_kept():
    first = conditions.set_condition([], Condition("SLAMet", "True", "A", "m"), 1, "T1")
    both = conditions.set_condition(first, Condition("Ready", "True", "B", "m"), 1, "T2")
    assert [c["type"] for c in both] == ["Ready", "SLAMet"]


def _deployment(desired: int, ready: int) -> dict:
    return {"spec": {"replicas": desired}, "status": {"readyReplicas": ready}}


@pytest.mark.parametrize(
    ("desired", "ready", "status", "reason"),
    [
        (2, 0, "False", "NoReadyWorkers"),
        (2, 1, "True", "WorkersStarting"),
        (2, 2, "True", "WorkersReady"),
    ],
)
def test_ready_follows_the_workers(pool, desired, ready, status, reason):
    condition = conditions.ready(pool["spec"], _deployment(desired, ready), [])
    assert (condition.status, condition.reason) == (status, reason)


APPLY_FAILED = {
    "type": "Reconciled",
    "status": "False",
    "reason": "ApplyFailed",
    "message": 'Deployment a-worker: Deployment.apps "a-worker" is invalid: spec.template...',
}


def test_apply_failure_without_a_deployment_is_the_ready_reason_not_scaled_to_zero(pool):
    condition = conditions.ready(pool["spec"], None, [APPLY_FAILED])
    assert (condition.status, condition.reason) == ("False", "ApplyFailed")
    assert condition.message == APPLY_FAILED["message"]


def test_apply_failure_outranks_ready_workers_of_an_earlier_spec(pool):
    condition = conditions.ready(pool["spec"], _deployment(2, 2), [APPLY_FAILED])
    assert (condition.status, condition.reason) == ("False", "ApplyFailed")
    assert condition.message.startswith(APPLY_FAILED["message"])
    assert "2 of 2 workers of an earlier spec are ready" in condition.message


def test_no_deployment_without_an_error_is_not_called_scaled_to_zero(pool):
    condition = conditions.ready(pool["spec"], None, [])
    assert (condition.status, condition.reason) == ("False", "NoWorkerDeployment")


def test_manual_zero_is_scaled_to_zero_by_manual_replicas(pool):
    pool["spec"]["scaling"].update(mode="Manual", manualReplicas=0)
    condition = conditions.ready(pool["spec"], _deployment(0, 0), [])
    assert (condition.status, condition.reason) == ("False", "ScaledToZero")
    assert condition.message == "scaling.manualReplicas is 0: no worker runs"


def test_zero_workers_on_an_auto_pool_never_blames_manual_replicas(pool):
    condition = conditions.ready(pool["spec"], _deployment(0, 0), [])
    assert condition.reason == "ScaledToZero"
    assert "manualReplicas" not in condition.message
    assert "outside the operator" in condition.message and "replicas.min (1)" in condition.message


def test_zero_workers_held_by_an_external_scaler_names_it(pool):
    conflict = conditions.scaler_conflict(["ScaledObject/queue"], "assistant-worker")
    current = conditions.set_condition([], conflict, 1, "T")
    condition = conditions.ready(pool["spec"], _deployment(0, 0), current)
    assert condition.reason == "ScaledToZero"
    assert "ScaledObject/queue" in condition.message


def test_zero_workers_in_recommend_mode_leave_the_count_to_the_user(pool):
    pool["spec"]["scaling"]["mode"] = "Recommend"
    condition = conditions.ready(pool["spec"], _deployment(0, 0), [])
    assert condition.reason == "ScaledToZero"
    assert "scaling.mode Recommend" in condition.message


def test_scaler_conflict_names_the_autoscaler_and_the_deployment():
    condition = conditions.scaler_conflict(["HorizontalPodAutoscaler/cpu"], "a-worker")
    assert condition.status == "True"
    assert condition.reason == "HorizontalPodAutoscalerFound"
    assert "HorizontalPodAutoscaler/cpu" in condition.message and "a-worker" in condition.message


def test_first_visit_adds_the_control_loops_conditions_as_unknown():
    added = conditions.initial([], 1, "T")
    assert {(c["type"], c["status"]) for c in added} == {
        ("MetricsAvailable", "Unknown"),
        ("SLAMet", "Unknown"),
    }


def test_first_visit_keeps_what_the_control_loop_already_set():
    existing = [{"type": "SLAMet", "status": "True", "reason": "Met", "message": ""}]
    added = conditions.initial(existing, 1, "T")
    assert conditions.find(added, "SLAMet")["status"] == "True"


def test_worst_endpoint_is_the_one_nearest_its_sla(pool):
    spec = pool["spec"]
    spec["endpoints"][1]["sla"] = {"ttftP95Milliseconds": 2000}
    measured = [
        {"name": "inline-completion", "ttftP95Milliseconds": 240},  # 80% of 300
        {"name": "nightly-labeling", "ttftP95Milliseconds": 1800},  # 90% of 2000
    ]
    assert conditions.worst_endpoint(spec, measured) == "nightly-labeling 1800/2000ms"


def test_worst_endpoint_ignores_throughput_classes_and_unmeasured_endpoints(pool):
    measured = [{"name": "nightly-labeling", "ttftP95Milliseconds": 9000}, {"name": "x"}]
    assert conditions.worst_endpoint(pool["spec"], measured) is None


def test_a_watched_condition_turning_false_posts_a_warning_named_after_its_reason() -> None:
    from carpool_operator.conditions import Condition, transition_events

    previous = [{"type": "MetricsAvailable", "status": "True", "reason": "MetricsFresh"}]
    shown = [Condition("MetricsAvailable", "False", "MissingScrapeLabels", "add pool")]
    assert transition_events(previous, shown, ["MetricsAvailable"]) == [
        ("Warning", "MissingScrapeLabels", "add pool")
    ]


def test_an_unchanged_reason_posts_nothing_even_with_new_numbers() -> None:
    from carpool_operator.conditions import Condition, transition_events

    previous = [{"type": "MetricsAvailable", "status": "False", "reason": "MetricsStale"}]
    shown = [Condition("MetricsAvailable", "False", "MetricsStale", "61 s old")]
    assert transition_events(previous, shown, ["MetricsAvailable"]) == []


def test_recovery_posts_a_normal_event_and_a_first_true_posts_none() -> None:
    from carpool_operator.conditions import Condition, transition_events

    fresh = [Condition("MetricsAvailable", "True", "MetricsFresh", "all series present")]
    was_false = [{"type": "MetricsAvailable", "status": "False", "reason": "NoSamples"}]
    was_unknown = [{"type": "MetricsAvailable", "status": "Unknown", "reason": "Awaiting"}]
    assert transition_events(was_false, fresh, ["MetricsAvailable"]) == [
        ("Normal", "MetricsFresh", "all series present")
    ]
    assert transition_events(was_unknown, fresh, ["MetricsAvailable"]) == []
