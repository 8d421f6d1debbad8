"""Read every pool's queue-delay signals from Prometheus in one batch of PromQL queries.

Contract: ``fetch_pool_metrics(url, window)`` runs a fixed set of queries (one per signal, each
grouped by ``namespace, pool, endpoint``, so the cost does not grow with the number of pools)
through prometheus-api-client and returns ``PoolMetrics`` per ``(namespace, pool)``. It never
turns a missing series into zero: a signal absent for an endpoint stays ``None``, and a
Prometheus that cannot be reached raises ``MetricsUnavailable`` with the reason. Blocking I/O:
call it off the event loop (``asyncio.to_thread``).

The ``namespace`` and ``pool`` labels come from scrape relabelling (the pod's namespace and its
``carpool.dev/pool`` label); the chart's PodMonitor and the local Prometheus both set them.
"""

from __future__ import annotations

import dataclasses
import math

from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from requests import RequestException

from carpool_policy import EndpointObservation

BY = "namespace, pool, endpoint"


class MetricsUnavailable(RuntimeError):
    """Prometheus could not be queried; the message says why."""


def queries(window: str) -> dict[str, str]:
    """The PromQL of each signal; keys are ``EndpointObservation`` fields (plus bookkeeping)."""

    def rate(metric: str, match: str = "") -> str:
        return f"sum by ({BY}) (rate({metric}{match}[{window}]))"

    def p95(histogram: str) -> str:
        return f"histogram_quantile(0.95, sum by ({BY}, le) (rate({histogram}_bucket[{window}])))"

    admitted = rate("carpool_queue_wait_seconds_count")
    rejected = rate("carpool_requests_total", '{outcome="rejected"}')
    return {
        # Arrivals = requests admitted into a batch + requests turned away at the door.
        "arrival_rate_per_second": f"{admitted} + ({rejected} or {admitted} * 0)",
        "mean_prompt_tokens": f"{rate('carpool_prompt_tokens_total')} / {admitted}",
        "mean_generated_tokens": (
            f"{rate('carpool_generated_tokens_total')} / "
            f"{rate('carpool_request_duration_seconds_count')}"
        ),
        "queue_wait_p95_seconds": p95("carpool_queue_wait_seconds"),
        "ttft_p95_seconds": p95("carpool_time_to_first_token_seconds"),
        "waiting": f"sum by ({BY}) (carpool_requests_waiting)",
        "running": f"sum by ({BY}) (carpool_requests_running)",
        "rejected_rate_per_second": rejected,
        "_sampled_at": f"max by ({BY}) (timestamp(carpool_requests_waiting))",
    }


@dataclasses.dataclass
class PoolMetrics:
    """One pool's signals: per endpoint, and the newest sample's time."""

    endpoints: dict[str, EndpointObservation]
    sampled_at: float | None


def _value(sample: dict) -> float | None:
    value = float(sample["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


def fetch_pool_metrics(
    url: str, window: str = "1m", timeout_seconds: float = 5.0
) -> dict[tuple[str, str], PoolMetrics]:
    connection = PrometheusConnect(url=url, disable_ssl=True)
    timeout = f"{int(timeout_seconds)}s"
    fields: dict[tuple[str, str, str], dict[str, float | None]] = {}
    for name, promql in queries(window).items():
        try:
            samples = connection.custom_query(promql, params={"timeout": timeout})
        except (PrometheusApiClientException, RequestException, ValueError) as error:
            raise MetricsUnavailable(f"query for {name.strip('_')} failed: {error}") from error
        for sample in samples:
            labels = sample["metric"]
            key = (labels.get("namespace", ""), labels.get("pool", ""), labels.get("endpoint", ""))
            if all(key):
                fields.setdefault(key, {})[name] = _value(sample)
    pools: dict[tuple[str, str], PoolMetrics] = {}
    for (namespace, pool, endpoint), values in fields.items():
        metrics = pools.setdefault((namespace, pool), PoolMetrics({}, None))
        sampled_at = values.pop("_sampled_at", None)
        if sampled_at is not None:
            metrics.sampled_at = max(metrics.sampled_at or 0.0, sampled_at)
        metrics.endpoints[endpoint] = EndpointObservation(**values)
    return pools
