"""The operator's own Prometheus metrics (not the workers'), served on `--metrics-port`.

Contract: `observe(trigger)` is a context manager around one reconcile that counts it in
`carpool_operator_reconciles_total{trigger,outcome}` (outcome ok or error) and times it in
`carpool_operator_reconcile_duration_seconds{trigger}`; `count_applied(kind, action)` counts
owned objects created, updated or restored; `count_error(where)` counts API errors by the object
kind (or "status", "event") they happened on. `serve(port)` starts the HTTP server (any path
answers with the metrics, /metrics included).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import prometheus_client

REGISTRY = prometheus_client.CollectorRegistry(auto_describe=True)

RECONCILES = prometheus_client.Counter(
    "carpool_operator_reconciles_total",
    "InferencePool reconciles, by what triggered them and how they ended.",
    ["trigger", "outcome"],
    registry=REGISTRY,
)
DURATION = prometheus_client.Histogram(
    "carpool_operator_reconcile_duration_seconds",
    "How long one InferencePool reconcile took.",
    ["trigger"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
APPLIED = prometheus_client.Counter(
    "carpool_operator_objects_applied_total",
    "Owned objects the operator created, updated or restored.",
    ["kind", "action"],
    registry=REGISTRY,
)
ERRORS = prometheus_client.Counter(
    "carpool_operator_api_errors_total",
    "Kubernetes API calls that failed during a reconcile, by the object kind they were for.",
    ["kind"],
    registry=REGISTRY,
)


@contextlib.contextmanager
def observe(trigger: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    except BaseException:
        RECONCILES.labels(trigger=trigger, outcome="error").inc()
        raise
    else:
        RECONCILES.labels(trigger=trigger, outcome="ok").inc()
    finally:
        DURATION.labels(trigger=trigger).observe(time.monotonic() - started)


def count_applied(kind: str, action: str) -> None:
    APPLIED.labels(kind=kind, action=action).inc()


def count_error(kind: str) -> None:
    ERRORS.labels(kind=kind).inc()


def serve(port: int, address: str = "0.0.0.0") -> None:
    prometheus_client.start_http_server(port, addr=address, registry=REGISTRY)
