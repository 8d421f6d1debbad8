"""Turn what the API server and Prometheus say about one pool into the policy's Observation.

Contract (pure, no I/O): ``build_observation(pool, deployment, pods, metrics, error)``
returns a ``carpool_policy.Observation``. The Deployment gives the desired and ready worker
counts; pods that are Pending because the scheduler found no node for them (no free GPU)
count as ``pending_unschedulable_replicas``; the limits in force come from the pool's status.
``available`` is False, with the reason, only when Prometheus could not be asked; a pool with
no series (or only old ones) is passed on as such, and the policy holds and says which it was.
A missing series is never turned into zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from carpool_operator import limits
from carpool_operator.prometheus import PoolMetrics
from carpool_policy import EndpointLimits, Observation

Obj = Mapping[str, Any]


def _unschedulable(pod: Obj) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Pending" or (pod.get("spec") or {}).get("nodeName"):
        return False
    return any(
        c.get("type") == "PodScheduled"
        and c.get("status") == "False"
        and c.get("reason") == "Unschedulable"
        for c in status.get("conditions") or []
    )


def limits_in_force(pool: Obj) -> dict[str, EndpointLimits]:
    return {
        name: EndpointLimits(values["maxBatchSize"], values["batchWindowMilliseconds"])
        for name, values in limits.in_force_from_status(pool.get("status")).items()
        if "maxBatchSize" in values and "batchWindowMilliseconds" in values
    }


def build_observation(
    pool: Obj,
    deployment: Obj | None,
    pods: Sequence[Obj],
    metrics: PoolMetrics | None,
    error: str | None,
) -> Observation:
    spec = (deployment or {}).get("spec") or {}
    status = (deployment or {}).get("status") or {}
    live_pods = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    common = {
        "desired_replicas": int(spec.get("replicas") or 0),
        "ready_replicas": int(status.get("readyReplicas") or 0),
        "pending_unschedulable_replicas": sum(1 for p in live_pods if _unschedulable(p)),
        "limits": limits_in_force(pool),
    }
    if error:
        return Observation(sampled_at=None, available=False, unavailable_reason=error, **common)
    # No series, or only old ones: the policy tells "no samples" and "stale" apart and holds.
    return Observation(
        sampled_at=metrics.sampled_at if metrics is not None else None,
        available=True,
        endpoints=dict(metrics.endpoints) if metrics is not None else {},
        **common,
    )
