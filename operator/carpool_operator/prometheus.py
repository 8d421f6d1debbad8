"""Read every pool's queue-delay signals from Prometheus in one batch of PromQL queries.

Contract: ``fetch_pool_metrics(access, window)`` runs a fixed set of queries (one per signal, each
grouped by ``namespace, pool, endpoint``, so the cost does not grow with the number of pools)
through prometheus-api-client and returns ``PoolMetrics`` per ``(namespace, pool)``. It never
turns a missing series into zero: a signal absent for an endpoint stays ``None``, and a
Prometheus that cannot be queried raises ``MetricsUnavailable`` with the reason and, where one
is known, what to fix. ``scrape_facts(access, addresses)`` asks what Prometheus holds of given
worker addresses (``ip:port``) whatever their labels, for ``diagnose``. Blocking I/O: call both
off the event loop (``asyncio.to_thread``).

``PrometheusAccess`` is how to reach one Prometheus: its URL and the operator's credentials (a
bearer token file, basic auth with a password file, a CA bundle, TLS verification off, extra
headers such as a tenant header). Files are read at each connection, so a rotated Secret is
picked up without a restart. Credentials go only to the operator's own Prometheus
(``--prometheus-url``), never to a URL a pool names.

The ``namespace`` and ``pool`` labels come from scrape relabelling (the pod's namespace and its
``carpool.dev/pool`` label); the chart's PodMonitor and the local Prometheus both set them.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import requests
from prometheus_api_client import PrometheusApiClientException, PrometheusConnect
from requests import RequestException
from urllib3.util.retry import Retry

from carpool_policy import BURST_WINDOW_SECONDS, EndpointObservation
from carpool_replica.buckets import PROMPT_MIX_WINDOW_SECONDS

BY = "namespace, pool, endpoint"
POOL_LABELS = ("namespace", "pool")
LEDGER_WINDOW = "10m"


class MetricsUnavailable(RuntimeError):
    """Prometheus could not be queried; the message says why and, when known, what to fix."""


@dataclasses.dataclass(frozen=True)
class PrometheusAccess:
    url: str
    bearer_token_file: str = ""
    basic_auth_username: str = ""
    basic_auth_password_file: str = ""
    ca_file: str = ""
    insecure_skip_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    # Where the URL came from, for messages: "spec.prometheus.url" or "--prometheus-url".
    source: str = "--prometheus-url"

    @property
    def has_credentials(self) -> bool:
        return bool(self.bearer_token_file or self.basic_auth_username)

    def anonymous(self, url: str, source: str) -> PrometheusAccess:
        """Another URL with this access's TLS settings and none of its credentials or headers."""
        return dataclasses.replace(
            self,
            url=url,
            bearer_token_file="",
            basic_auth_username="",
            basic_auth_password_file="",
            headers=(),
            source=source,
        )

    def connect(self) -> PrometheusConnect:
        session = requests.Session()
        session.verify = False if self.insecure_skip_verify else (self.ca_file or True)
        headers = dict(self.headers)
        if self.bearer_token_file:
            headers["Authorization"] = f"Bearer {_read(self.bearer_token_file)}"
        auth = None
        if self.basic_auth_username:
            auth = (self.basic_auth_username, _read(self.basic_auth_password_file))
        # One retry: the control loop asks again at its next interval anyway.
        retry = Retry(total=1, backoff_factor=0.2, status_forcelist=[502, 503, 504])
        return PrometheusConnect(
            url=self.url.rstrip("/"),
            headers=headers or None,
            auth=auth,
            session=session,
            retry=retry,
        )


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise MetricsUnavailable(f"cannot read {path} ({error.strerror})") from error


def queries(window: str) -> dict[str, str]:
    """The PromQL of each signal; keys are ``EndpointObservation`` fields, ``USAGE`` fields and
    bookkeeping (``_sampled_at``)."""

    def rate(metric: str, match: str = "", over: str = window) -> str:
        return f"sum by ({BY}) (rate({metric}{match}[{over}]))"

    def arrivals(over: str) -> str:
        # Arrivals = requests whose prefill started + requests turned away at the door.
        started = rate("carpool_queue_wait_seconds_count", over=over)
        rejected = rate("carpool_requests_total", '{outcome="rejected"}', over)
        return f"{started} + ({rejected} or {started} * 0)"

    def ledger(metric: str) -> str:
        return f"sum by ({BY}) (rate({metric}[{LEDGER_WINDOW}]))"

    def p95(histogram: str) -> str:
        return f"histogram_quantile(0.95, sum by ({BY}, le) (rate({histogram}_bucket[{window}])))"

    # A request is counted once its prefill starts (its queue wait ends there, and its prompt is
    # counted with it), so arrivals lag by one queue wait: seconds against the rate window.
    started = rate("carpool_queue_wait_seconds_count")
    rejected = rate("carpool_requests_total", '{outcome="rejected"}')
    return {
        "arrival_rate_per_second": arrivals(window),
        # The same over the burst window: a burst that the rate window's mean dilutes.
        "burst_arrival_rate_per_second": arrivals(f"{BURST_WINDOW_SECONDS:g}s"),
        "mean_prompt_tokens": f"{rate('carpool_prompt_tokens_total')} / {started}",
        "mean_generated_tokens": (
            f"{rate('carpool_generated_tokens_total')} / "
            f"{rate('carpool_request_duration_seconds_count')}"
        ),
        "queue_wait_p95_seconds": p95("carpool_queue_wait_seconds"),
        "ttft_p95_seconds": p95("carpool_time_to_first_token_seconds"),
        "service_time_p95_seconds": p95("carpool_service_time_seconds"),
        "waiting": f"sum by ({BY}) (carpool_requests_waiting)",
        "running": f"sum by ({BY}) (carpool_requests_running)",
        "rejected_rate_per_second": rejected,
        # Per `le` bucket (read as requests per second in each), over a longer window: the mix
        # is a property of the traffic, not of the last minute.
        "prompt_length_buckets": (
            f"sum by ({BY}, le) "
            f"(rate(carpool_prompt_length_tokens_bucket[{PROMPT_MIX_WINDOW_SECONDS}s]))"
        ),
        # The fuel ledger's inputs (see carpool_operator.ledger), over a longer window: a cost
        # is a running account, not a reaction.
        "tokens_per_second": (
            f"{ledger('carpool_prompt_tokens_total')} + {ledger('carpool_generated_tokens_total')}"
        ),
        "engine_seconds_per_second": ledger("carpool_engine_seconds_total"),
        "_sampled_at": f"max by ({BY}) (timestamp(carpool_requests_waiting))",
    }


@dataclasses.dataclass(frozen=True)
class EndpointUsage:
    """What one endpoint consumed over the rate window, for the fuel ledger."""

    tokens_per_second: float | None = None  # prompt + generated
    engine_seconds_per_second: float | None = None  # engine step time charged to it


USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(EndpointUsage))


@dataclasses.dataclass
class PoolMetrics:
    """One pool's signals: per endpoint, and the newest sample's time."""

    endpoints: dict[str, EndpointObservation]
    sampled_at: float | None
    usage: dict[str, EndpointUsage] = dataclasses.field(default_factory=dict)


def _value(sample: dict) -> float | None:
    value = float(sample["value"][1])
    return None if math.isnan(value) or math.isinf(value) else value


def _query(connection: PrometheusConnect, access: PrometheusAccess, name: str, promql: str):
    try:
        return connection.custom_query(promql, params={"timeout": "5s"}, timeout=10)
    except PrometheusApiClientException as error:
        raise MetricsUnavailable(_refusal(access, str(error))) from error
    except requests.exceptions.SSLError as error:
        raise MetricsUnavailable(
            f"TLS verification of {access.url} failed ({_short(error)}): give the operator the "
            f"CA that signed Prometheus' certificate (the chart's operator.prometheus.caBundle, "
            f"--prometheus-ca-file)"
        ) from error
    except (RequestException, ValueError) as error:
        raise MetricsUnavailable(
            f"cannot reach {access.url} (query for {name.strip('_')} failed: {_short(error)}): "
            f"check the URL ({access.source}) and that the operator's pods can connect to it"
        ) from error


def _short(error: Exception) -> str:
    text = str(error)
    # requests nests the cause; its last part is the one a person can act on.
    return text.rsplit("Caused by ", 1)[-1].strip(" ()'\"")[:300]


def _refusal(access: PrometheusAccess, detail: str) -> str:
    status = detail.split("HTTP Status Code ", 1)[-1].split(" ", 1)[0]
    if status in ("401", "403"):
        if access.source == "spec.prometheus.url":
            fix = (
                "the operator sends its Prometheus credentials only to its own --prometheus-url: "
                "remove spec.prometheus.url to use that Prometheus, or make this one readable "
                "without credentials"
            )
        elif access.has_credentials:
            fix = "the credentials the operator sends were refused: check the Secret's value"
        else:
            fix = (
                "it needs credentials: set the chart's operator.prometheus.bearerTokenSecret "
                "or operator.prometheus.basicAuth (and headers such as X-Scope-OrgID for "
                "Mimir or Thanos tenants)"
            )
        return f"{access.url} answered {status} Unauthorized/Forbidden: {fix}"
    return f"{access.url} refused the query: {detail[:300]}"


def fetch_pool_metrics(
    access: PrometheusAccess, window: str = "1m"
) -> dict[tuple[str, str], PoolMetrics]:
    connection = access.connect()
    fields: dict[tuple[str, str, str], dict[str, Any]] = {}
    # A signal grouped by `le` is a histogram's buckets: its samples are gathered, then read
    # as a rate per bucket.
    cumulative: dict[tuple[str, str, str], dict[str, list]] = {}
    for name, promql in queries(window).items():
        for sample in _query(connection, access, name, promql):
            labels = sample["metric"]
            key = (labels.get("namespace", ""), labels.get("pool", ""), labels.get("endpoint", ""))
            if not all(key):
                continue
            if "le" in labels:
                bucket = (float(labels["le"]), _value(sample))
                cumulative.setdefault(key, {}).setdefault(name, []).append(bucket)
            else:
                fields.setdefault(key, {})[name] = _value(sample)
    for key, histograms in cumulative.items():
        fields.setdefault(key, {}).update({n: per_bucket(b) for n, b in histograms.items()})
    pools: dict[tuple[str, str], PoolMetrics] = {}
    for (namespace, pool, endpoint), values in fields.items():
        metrics = pools.setdefault((namespace, pool), PoolMetrics({}, None))
        sampled_at = values.pop("_sampled_at", None)
        if sampled_at is not None:
            metrics.sampled_at = max(metrics.sampled_at or 0.0, sampled_at)
        usage = {k: values.pop(k) for k in USAGE_FIELDS if k in values}
        metrics.usage[endpoint] = EndpointUsage(**usage)
        metrics.endpoints[endpoint] = EndpointObservation(**values)
    return pools


def per_bucket(
    cumulative: list[tuple[float, float | None]],
) -> tuple[tuple[float, float], ...] | None:
    """A histogram's cumulative bucket rates by `le` as (upper bound, rate in that bucket)."""
    if any(value is None for _, value in cumulative):
        return None
    ordered = sorted((le, value or 0.0) for le, value in cumulative)
    below, buckets = 0.0, []
    for le, value in ordered:
        buckets.append((le, max(0.0, value - below)))
        below = max(below, value)
    return tuple(buckets)


@dataclasses.dataclass(frozen=True)
class ScrapeFacts:
    """What Prometheus holds of a pool's worker addresses, whatever the series' labels."""

    # address -> the worker series' values of `namespace` and `pool` ("" when absent)
    labels: dict[str, dict[str, str]]
    # address -> `up` of its scrape (absent: Prometheus has no target there)
    up: dict[str, float]


def scrape_facts(access: PrometheusAccess, addresses: list[str]) -> ScrapeFacts:
    """Ask which of ``addresses`` Prometheus scrapes, and with which pool labels."""
    if not addresses:
        return ScrapeFacts({}, {})
    connection = access.connect()
    matcher = "|".join(a.replace(".", "\\\\.") for a in sorted(addresses))
    selector = f'{{instance=~"{matcher}"}}'
    labels: dict[str, dict[str, str]] = {}
    series = f"group by (instance, {', '.join(POOL_LABELS)}) (carpool_limits_version{selector})"
    for sample in _query(connection, access, "scrape labels", series):
        metric = sample["metric"]
        labels[metric.get("instance", "")] = {k: metric.get(k, "") for k in POOL_LABELS}
    up: dict[str, float] = {}
    for sample in _query(connection, access, "up", f"max by (instance) (up{selector})"):
        value = _value(sample)
        if value is not None:
            up[sample["metric"].get("instance", "")] = value
    return ScrapeFacts(labels, up)
