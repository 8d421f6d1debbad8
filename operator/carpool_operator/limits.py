"""The limits document (docs/interfaces.md) the operator writes to a pool's ConfigMap.

Contract (pure, no I/O):
- `build_limits(spec, in_force, previous_version, previous_body)` returns the document for a pool
  spec. Each endpoint's `maxBatchSize` and `batchWindowMilliseconds` are the values in force
  (what the control loop last set, from the pool's status) clamped into the spec's current
  bounds, or the bounds' max for an endpoint with none; priority and queue limits come from the
  spec. The version never goes down and grows by one exactly when the body differs from
  `previous_body` (what the ConfigMap holds now), so a worker never refuses it as stale.
- `render(document)` is the ConfigMap value: deterministic JSON, so applying an unchanged
  document is a no-op on the API server.
- `parse(text)` reads a ConfigMap value back; anything unreadable is None.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from carpool_policy import PoolSpec


def in_force_from_status(status: Mapping[str, Any] | None) -> dict[str, dict[str, int]]:
    """The limits the operator last set per endpoint, as recorded in the pool's status."""
    out: dict[str, dict[str, int]] = {}
    for item in (status or {}).get("endpoints") or []:
        values = {
            key: item[key]
            for key in ("maxBatchSize", "batchWindowMilliseconds")
            if isinstance(item.get(key), int) and not isinstance(item.get(key), bool)
        }
        if item.get("name") and values:
            out[item["name"]] = values
    return out


def build_body(
    spec: Mapping[str, Any], in_force: Mapping[str, Mapping[str, int]]
) -> dict[str, Any]:
    """The document without its version."""
    pool = PoolSpec.from_crd(spec)
    default = next((e.name for e in pool.endpoints if e.default), pool.endpoints[0].name)
    endpoints: dict[str, dict[str, int]] = {}
    for endpoint in pool.endpoints:
        current = in_force.get(endpoint.name, {})
        batch = current.get("maxBatchSize", endpoint.max_batch_size.max)
        window = current.get("batchWindowMilliseconds", endpoint.batch_window_milliseconds.max)
        endpoints[endpoint.name] = {
            "priority": endpoint.priority,
            "maxBatchSize": endpoint.max_batch_size.clamp(batch),
            "batchWindowMilliseconds": endpoint.batch_window_milliseconds.clamp(window),
            "maxQueueWaitMilliseconds": endpoint.max_queue_wait_milliseconds,
            "maxQueueLength": endpoint.max_queue_length,
        }
    return {"defaultEndpoint": default, "endpoints": endpoints}


def build_limits(
    spec: Mapping[str, Any],
    in_force: Mapping[str, Mapping[str, int]] | None = None,
    previous: Mapping[str, Any] | None = None,
    floor_version: int = 0,
) -> dict[str, Any]:
    """The full document; `previous` is the document the ConfigMap holds now (or None)."""
    body = build_body(spec, in_force or {})
    return with_version(body, previous, floor_version)


def with_version(
    body: Mapping[str, Any], previous: Mapping[str, Any] | None, floor_version: int = 0
) -> dict[str, Any]:
    """Stamp `body` with a version that a worker holding `previous` will accept."""
    previous_version = _version(previous)
    version = max(previous_version, floor_version)
    if previous is None or strip_version(previous) != dict(body):
        version += 1
    return {"version": version, **body}


def strip_version(document: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in document.items() if k != "version"}


def render(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def parse(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _version(document: Mapping[str, Any] | None) -> int:
    value = (document or {}).get("version")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return 0
