"""The operator's part of an InferencePool's status, computed from what reconcile saw.

Contract (pure; `now` is an RFC 3339 timestamp passed in):
- `build_status(pool, generation, deployment, document, conflict, error, now)` returns the new
  status: observedGeneration, selector, limitsVersion, per-endpoint limits in force (keeping the
  control loop's observations of each endpoint, dropping endpoints no longer in the spec), the
  Ready, Reconciled and ScalerConflict conditions, the control loop's conditions as Unknown
  until it sets them, and everything `deployment_status` adds. After an error (`error` is the
  message) only Reconciled=False, the replica counts and Ready move: observedGeneration stays,
  so it never claims a generation whose objects were not applied.
- `deployment_status(spec, status, deployment, generation, now)` refreshes replicas,
  readyReplicas, desiredReplicas (kept in Recommend mode, where the control loop sets it to its
  recommendation), worstEndpoint and the Ready condition from the worker Deployment and the
  conditions already in `status` (so a failed apply stays the Ready reason until one succeeds).
Fields this module does not know (the control loop's) are carried over untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from carpool_operator import conditions, names

Obj = dict[str, Any]


def build_status(
    pool: Mapping[str, Any],
    generation: int,
    deployment: Mapping[str, Any] | None,
    document: Mapping[str, Any] | None,
    conflict: conditions.Condition,
    error: str | None,
    now: str,
) -> Obj:
    status = dict(pool.get("status") or {})
    conds = status.get("conditions") or []
    if error is None:
        status["observedGeneration"] = generation
        conds = conditions.set_condition(conds, conflict, generation, now)
    conds = conditions.set_condition(
        conds, conditions.reconciled(generation, error), generation, now
    )
    status["selector"] = names.selector_string(pool["metadata"]["name"])
    if document is not None and error is None:
        status["limitsVersion"] = document["version"]
        status["endpoints"] = endpoint_status(status.get("endpoints") or [], document)
    status["conditions"] = conditions.initial(conds, generation, now)
    return deployment_status(pool["spec"], status, deployment, generation, now)


def endpoint_status(current: list[Obj], document: Mapping[str, Any]) -> list[Obj]:
    by_name = {item.get("name"): item for item in current}
    out = []
    for endpoint, values in document["endpoints"].items():
        item = dict(by_name.get(endpoint) or {"name": endpoint})
        item["maxBatchSize"] = values["maxBatchSize"]
        item["batchWindowMilliseconds"] = values["batchWindowMilliseconds"]
        out.append(item)
    return out


def deployment_status(
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    generation: int,
    now: str,
) -> Obj:
    out = dict(status)
    dep_spec = (deployment or {}).get("spec") or {}
    dep_status = (deployment or {}).get("status") or {}
    desired = int(dep_spec.get("replicas", 0))
    out["replicas"] = int(dep_status.get("replicas", 0))
    out["readyReplicas"] = int(dep_status.get("readyReplicas", 0))
    mode = (spec.get("scaling") or {}).get("mode", "Auto")
    if mode != "Recommend" or "desiredReplicas" not in out:
        out["desiredReplicas"] = desired
    worst = conditions.worst_endpoint(spec, out.get("endpoints"))
    if worst is not None:
        out["worstEndpoint"] = worst
    ready = conditions.ready(spec, deployment, out.get("conditions"))
    out["conditions"] = conditions.set_condition(out.get("conditions"), ready, generation, now)
    return out
