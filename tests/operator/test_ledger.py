"""The fuel ledger: the pool's GPU spend charged to endpoints by engine time, per token."""

from __future__ import annotations

import pytest

from carpool_operator.ledger import cost_per_million_tokens, gpu_hour_price, gpus_held
from carpool_operator.prometheus import EndpointUsage


def pod(gpus: int, node: str | None = "n", phase: str = "Running") -> dict:
    limits = {"nvidia.com/gpu": gpus, "cpu": "4"}
    return {
        "spec": {"nodeName": node, "containers": [{"resources": {"limits": limits}}]},
        "status": {"phase": phase},
    }


def test_gpus_held_count_bound_pods_only() -> None:
    pods = [pod(1), pod(2), pod(1, node=None, phase="Pending"), pod(1, phase="Failed")]
    assert gpus_held(pods) == 3


def test_the_spec_price_wins_over_the_operators() -> None:
    assert gpu_hour_price({"cost": {"gpuHourPrice": "2.49"}}, "3") == 2.49
    assert gpu_hour_price({}, "3") == 3.0
    assert gpu_hour_price({}, "") is None


def test_endpoints_share_the_spend_by_engine_time_and_pay_per_token() -> None:
    usage = {
        "chat": EndpointUsage(tokens_per_second=100.0, engine_seconds_per_second=0.75),
        "batch": EndpointUsage(tokens_per_second=900.0, engine_seconds_per_second=0.25),
    }
    costs = cost_per_million_tokens(usage, gpus=2, price=3.6)  # 2 * 3.6 / 3600 = 0.002 per s
    assert costs["chat"] == pytest.approx(0.002 * 0.75 / 100 * 1e6)
    assert costs["batch"] == pytest.approx(0.002 * 0.25 / 900 * 1e6)
    spend = sum(costs[e] * usage[e].tokens_per_second / 1e6 for e in usage)
    assert spend == pytest.approx(0.002)  # every GPU-second is charged, idle time included


def test_an_endpoint_without_tokens_has_no_cost_rather_than_zero() -> None:
    usage = {
        "chat": EndpointUsage(tokens_per_second=0.0, engine_seconds_per_second=0.0),
        "batch": EndpointUsage(tokens_per_second=10.0, engine_seconds_per_second=0.5),
    }
    assert set(cost_per_million_tokens(usage, gpus=1, price=1.0)) == {"batch"}


def test_no_price_or_no_gpu_means_no_ledger() -> None:
    usage = {"chat": EndpointUsage(tokens_per_second=10.0, engine_seconds_per_second=1.0)}
    assert cost_per_million_tokens(usage, gpus=1, price=None) == {}
    assert cost_per_million_tokens(usage, gpus=0, price=2.0) == {}
