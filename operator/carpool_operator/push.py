"""Push a limits document to every ready worker pod of a pool, without waiting for the file.

Contract: ``push_limits(pods, port, token, document)`` sends ``PUT /admin/limits`` with the
bearer token to each pod that is Ready and has an IP, concurrently with a short timeout, and
returns a ``PushResult`` per pod. A pod that refuses (409: it already holds a newer version),
times out or is unreachable is reported, not retried: the ConfigMap the worker re-reads is the
durable path, and the push only makes a change take effect within one control interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

TIMEOUT_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class PushResult:
    pod: str
    ok: bool
    detail: str


def ready_pod_addresses(pods: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """``{pod name: IP}`` of the pods whose Ready condition is True."""
    found = {}
    for pod in pods:
        status = pod.get("status") or {}
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or []
        )
        if ready and status.get("podIP") and not pod["metadata"].get("deletionTimestamp"):
            found[pod["metadata"]["name"]] = status["podIP"]
    return found


def _push_one(
    name: str, address: str, port: int, token: str, document: Mapping[str, Any]
) -> PushResult:
    url = f"http://{address}:{port}/admin/limits"
    try:
        response = httpx.put(
            url,
            json=dict(document),
            timeout=TIMEOUT_SECONDS,
            headers={"Authorization": f"Bearer {token}"},
        )
    except httpx.HTTPError as error:
        return PushResult(name, False, f"unreachable: {error.__class__.__name__}")
    if response.status_code == 200:
        return PushResult(name, True, "applied")
    return PushResult(name, False, f"HTTP {response.status_code}: {response.text[:200]}")


def push_limits(
    pods: Sequence[Mapping[str, Any]], port: int, token: str, document: Mapping[str, Any]
) -> list[PushResult]:
    targets = ready_pod_addresses(pods)
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        futures = [
            pool.submit(_push_one, name, address, port, token, document)
            for name, address in targets.items()
        ]
        return [future.result() for future in futures]
