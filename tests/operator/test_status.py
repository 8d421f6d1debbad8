"""The operator's part of a pool's status: what moves after success, after an error, per mode."""

from __future__ import annotations

from carpool_operator import conditions, limits, status

NO_CONFLICT = conditions.scaler_conflict([], "assistant-worker")
DEPLOYMENT = {"spec": {"replicas": 3}, "status": {"replicas": 3, "readyReplicas": 2}}


def _types(result):
    return {c["type"]: (c["status"], c["reason"]) for c in result["conditions"]}


def test_success_records_the_generation_limits_and_counts(pool):
    document = limits.build_limits(pool["spec"])
    result = status.build_status(pool, 4, DEPLOYMENT, document, NO_CONFLICT, None, "T")
    assert result["observedGeneration"] == 4
    assert result["limitsVersion"] == 1
    assert (result["replicas"], result["readyReplicas"], result["desiredReplicas"]) == (3, 2, 3)
    assert _types(result)["Reconciled"] == ("True", "Applied")
    assert _types(result)["Ready"] == ("True", "WorkersStarting")
    assert result["selector"] == "app.kubernetes.io/name=carpool-worker,carpool.dev/pool=assistant"


def test_error_keeps_the_last_observed_generation(pool):
    pool["status"] = {"observedGeneration": 3}
    result = status.build_status(pool, 4, DEPLOYMENT, None, NO_CONFLICT, "Deployment: bad", "T")
    assert result["observedGeneration"] == 3
    assert _types(result)["Reconciled"] == ("False", "ApplyFailed")
    assert conditions.find(result["conditions"], "Reconciled")["message"] == "Deployment: bad"


def test_apply_failure_on_a_new_auto_pool_is_the_ready_reason(pool):
    error = 'Deployment assistant-worker: Deployment.apps "assistant-worker" is invalid: bad'
    result = status.build_status(pool, 1, None, None, NO_CONFLICT, error, "T")
    ready = conditions.find(result["conditions"], "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "ApplyFailed", error)


def test_deployment_status_moving_keeps_an_apply_failure_as_the_ready_reason(pool):
    failed = status.build_status(pool, 2, DEPLOYMENT, None, NO_CONFLICT, "Deployment: bad", "T")
    result = status.deployment_status(pool["spec"], failed, DEPLOYMENT, 2, "T2")
    assert _types(result)["Ready"] == ("False", "ApplyFailed")


def test_success_after_a_failure_gives_ready_back_to_the_workers(pool):
    failed = status.build_status(pool, 2, DEPLOYMENT, None, NO_CONFLICT, "Deployment: bad", "T")
    pool["status"] = failed
    result = status.build_status(pool, 3, DEPLOYMENT, None, NO_CONFLICT, None, "T2")
    assert _types(result)["Ready"] == ("True", "WorkersStarting")


def test_endpoint_observations_are_kept_and_removed_endpoints_dropped(pool):
    pool["status"] = {
        "endpoints": [
            {"name": "inline-completion", "ttftP95Milliseconds": 240, "maxBatchSize": 4},
            {"name": "gone", "ttftP95Milliseconds": 10},
        ]
    }
    document = limits.build_limits(pool["spec"], {"inline-completion": {"maxBatchSize": 4}})
    result = status.build_status(pool, 1, DEPLOYMENT, document, NO_CONFLICT, None, "T")
    by_name = {e["name"]: e for e in result["endpoints"]}
    assert set(by_name) == {"inline-completion", "nightly-labeling"}
    assert by_name["inline-completion"]["ttftP95Milliseconds"] == 240
    assert by_name["inline-completion"]["maxBatchSize"] == 4
    assert result["worstEndpoint"] == "inline-completion 240/300ms"


def test_recommend_mode_keeps_the_control_loops_recommendation(pool):
    pool["spec"]["scaling"]["mode"] = "Recommend"
    current = {"desiredReplicas": 6}
    result = status.deployment_status(pool["spec"], current, DEPLOYMENT, 1, "T")
    assert result["desiredReplicas"] == 6


def test_fields_of_the_control_loop_are_carried_over(pool):
    pool["status"] = {"policyState": {"x": 1}, "lastDecision": {"reason": "held"}}
    result = status.build_status(pool, 1, DEPLOYMENT, None, NO_CONFLICT, None, "T")
    assert result["policyState"] == {"x": 1} and result["lastDecision"] == {"reason": "held"}
