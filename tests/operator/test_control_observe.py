"""The control loop's view of a pool: Observation building, PromQL, push targets."""

from __future__ import annotations

import pytest

from carpool_operator.observe import build_observation
from carpool_operator.prometheus import PoolMetrics, per_bucket, queries
from carpool_operator.push import ready_pod_addresses
from carpool_policy import EndpointObservation

POOL = {
    "metadata": {"name": "p", "namespace": "ns"},
    "status": {"endpoints": [{"name": "chat", "maxBatchSize": 8, "batchWindowMilliseconds": 2}]},
}
DEPLOYMENT = {"spec": {"replicas": 3}, "status": {"readyReplicas": 2}}


def pod(
    name: str,
    *,
    ready: bool = True,
    phase: str = "Running",
    node: str | None = "n",
    unschedulable: bool = False,
    ip: str | None = "127.1.0.2",
) -> dict:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]
    return {
        "metadata": {"name": name},
        "spec": {"nodeName": node},
        "status": {"phase": phase, "podIP": ip, "conditions": conditions},
    }


def test_unschedulable_pending_pods_count_as_waiting_for_gpus() -> None:
    pods = [pod("a"), pod("b", phase="Pending", node=None, ip=None, unschedulable=True)]
    seen = build_observation(POOL, DEPLOYMENT, pods, PoolMetrics({}, None), None)
    assert (seen.desired_replicas, seen.ready_replicas) == (3, 2)
    assert seen.pending_unschedulable_replicas == 1


def test_limits_in_force_come_from_the_pools_status() -> None:
    seen = build_observation(POOL, DEPLOYMENT, [], None, None)
    assert seen.limits["chat"].max_batch_size == 8
    assert seen.limits["chat"].batch_window_milliseconds == 2


def test_prometheus_error_makes_the_observation_unavailable_with_the_reason() -> None:
    seen = build_observation(POOL, DEPLOYMENT, [], None, "connection refused")
    assert not seen.available
    assert seen.unavailable_reason == "connection refused"
    assert seen.endpoints == {}


def test_a_pool_without_series_is_available_but_has_no_samples() -> None:
    seen = build_observation(POOL, DEPLOYMENT, [], None, None)
    assert seen.available and seen.sampled_at is None and seen.endpoints == {}


def test_metrics_pass_through_unchanged() -> None:
    metrics = PoolMetrics({"chat": EndpointObservation(arrival_rate_per_second=4.0)}, 100.0)
    seen = build_observation(POOL, DEPLOYMENT, [], metrics, None)
    assert seen.sampled_at == 100.0
    assert seen.endpoints["chat"].arrival_rate_per_second == 4.0
    assert seen.endpoints["chat"].ttft_p95_seconds is None  # missing stays missing


@pytest.mark.parametrize("signal", ["queue_wait_p95_seconds", "ttft_p95_seconds"])
def test_latency_signals_are_p95s_of_the_worker_histograms_per_endpoint(signal: str) -> None:
    promql = queries("30s")[signal]
    assert promql.startswith("histogram_quantile(0.95,")
    assert "by (namespace, pool, endpoint, le)" in promql
    assert "[30s]" in promql


def test_arrivals_are_read_over_the_rate_window_and_over_the_burst_window() -> None:
    promql = queries("1m")
    assert "[1m]" in promql["arrival_rate_per_second"]
    assert "[15s]" in promql["burst_arrival_rate_per_second"]
    assert "[1m]" not in promql["burst_arrival_rate_per_second"]


def test_every_query_groups_by_pool_so_one_batch_serves_all_pools() -> None:
    for name, promql in queries("1m").items():
        assert "namespace, pool, endpoint" in promql, name


def test_a_histograms_cumulative_bucket_rates_become_rates_per_bucket() -> None:
    cumulative = [("+Inf", 3.0), ("64", 0.5), ("128", 2.5)]
    assert per_bucket([(float(le), rate) for le, rate in cumulative]) == (
        (64.0, 0.5),
        (128.0, 2.0),
        (float("inf"), 0.5),
    )
    assert per_bucket([(64.0, 1.0), (float("inf"), None)]) is None  # a gap is not a zero


def test_limits_are_pushed_only_to_ready_pods_with_an_address() -> None:
    pods = [pod("ready"), pod("starting", ready=False), pod("no-ip", ip=None)]
    deleting = pod("leaving")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert ready_pod_addresses([*pods, deleting]) == {"ready": "127.1.0.2"}
