"""Status conditions per the Kubernetes API conventions, and the operator's own ones.

Contract (pure): `set_condition(conditions, type_, status, reason, message, generation, now)`
returns a new list with that condition replaced or added; `lastTransitionTime` changes only
when `status` does, so re-setting a condition with a new message keeps its transition time.
`ready(spec, deployment, current)`, `reconciled(...)` and `scaler_conflict(...)` compute the
operator's conditions; Ready names the real cause when no worker serves: an apply failure
(Reconciled=False, with the API server's answer) before anything the Deployment says, and for a
Deployment at 0 replicas who put it there (manualReplicas, an external scaler, someone else);
`initial(...)` is what the first visit sets for the control loop's conditions when they are
absent (Unknown until the control loop has observed the pool). `worst_endpoint(spec, endpoints)`
is the printer column's summary: the SLA endpoint with the highest measured p95 TTFT relative
to its SLA, as "name p95/SLAms", or None before any is measured. `transition_events(previous,
shown, watched)` lists the Events a change of a watched condition posts: a Warning named after
its reason when it turns False or changes reason while False, a Normal one when it recovers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

READY = "Ready"
RECONCILED = "Reconciled"
SCALER_CONFLICT = "ScalerConflict"
METRICS_AVAILABLE = "MetricsAvailable"
SLA_MET = "SLAMet"
SLA_REACHABLE = "SLAReachable"

# The control loop owns these; the operator only makes them visible as Unknown at first.
CONTROL_LOOP_CONDITIONS = (METRICS_AVAILABLE, SLA_MET)


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    condition: Condition,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    existing = find(conditions, condition.type)
    transition = now
    if existing is not None and existing.get("status") == condition.status:
        transition = existing.get("lastTransitionTime") or now
    updated = {
        "type": condition.type,
        "status": condition.status,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
        "reason": condition.reason,
        "message": condition.message,
    }
    out = [dict(c) for c in conditions or [] if c.get("type") != condition.type]
    out.append(updated)
    order = [READY, RECONCILED, SCALER_CONFLICT]
    return sorted(out, key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))


def ready(
    spec: Mapping[str, Any],
    deployment: Mapping[str, Any] | None,
    current: Sequence[Mapping[str, Any]] | None,
) -> Condition:
    """Ready from the worker Deployment and the conditions already set (Reconciled, ScalerConflict).

    An apply failure comes first: whatever the Deployment shows is then not what the spec asks
    for, and the API server's answer is what the user has to fix.
    """
    desired = int(((deployment or {}).get("spec") or {}).get("replicas", 0))
    ready_replicas = int(((deployment or {}).get("status") or {}).get("readyReplicas", 0))
    reconciled = find(current, RECONCILED)
    if reconciled is not None and reconciled.get("status") == "False":
        serving = ""
        if deployment is not None:
            serving = f"; {ready_replicas} of {desired} workers of an earlier spec are ready"
        return Condition(READY, "False", "ApplyFailed", f"{reconciled.get('message')}{serving}")
    if deployment is None:
        return Condition(
            READY, "False", "NoWorkerDeployment", "the worker Deployment does not exist yet"
        )
    if desired == 0:
        return Condition(READY, "False", "ScaledToZero", _scaled_to_zero(spec, current))
    if ready_replicas == 0:
        return Condition(READY, "False", "NoReadyWorkers", f"0 of {desired} workers are ready")
    if ready_replicas < desired:
        return Condition(
            READY,
            "True",
            "WorkersStarting",
            f"{ready_replicas} of {desired} workers are ready; the pool serves meanwhile",
        )
    return Condition(
        READY, "True", "WorkersReady", f"{ready_replicas} of {desired} workers are ready"
    )


def _scaled_to_zero(spec: Mapping[str, Any], current: Sequence[Mapping[str, Any]] | None) -> str:
    """Who holds the worker Deployment at 0 replicas, in the words of the spec."""
    scaling = spec.get("scaling") or {}
    mode = scaling.get("mode", "Auto")
    conflict = find(current, SCALER_CONFLICT)
    if conflict is not None and conflict.get("status") == "True":
        return f"the worker Deployment has 0 replicas: {conflict.get('message')}"
    if mode == "Manual" and scaling.get("manualReplicas") == 0:
        return "scaling.manualReplicas is 0: no worker runs"
    if mode == "Recommend":
        return (
            "the worker Deployment has 0 replicas: in scaling.mode Recommend the worker count "
            "is yours to set"
        )
    target = (
        f"scaling.manualReplicas ({scaling.get('manualReplicas')})"
        if mode == "Manual"
        else f"replicas.min ({(spec.get('replicas') or {}).get('min', 1)})"
    )
    return (
        f"the worker Deployment was scaled to 0 outside the operator; the operator sets it "
        f"back to {target}"
    )


def reconciled(generation: int, error: str | None = None) -> Condition:
    if error:
        return Condition(RECONCILED, "False", "ApplyFailed", error)
    return Condition(
        RECONCILED,
        "True",
        "Applied",
        f"the worker Deployment, Service, limits ConfigMap, admin Secret and PodDisruptionBudget "
        f"match generation {generation}",
    )


def scaler_conflict(scalers: Sequence[str], deployment: str) -> Condition:
    if not scalers:
        return Condition(
            SCALER_CONFLICT,
            "False",
            "NoExternalScaler",
            f"no HorizontalPodAutoscaler or ScaledObject targets Deployment {deployment}",
        )
    one = len(scalers) == 1
    kinds = {s.split("/", 1)[0] for s in scalers}
    reason = "ScaledObjectFound" if "ScaledObject" in kinds else "HorizontalPodAutoscalerFound"
    return Condition(
        SCALER_CONFLICT,
        "True",
        reason,
        f"{', '.join(scalers)} {'targets' if one else 'target'} Deployment {deployment}: carpool "
        f"leaves the worker count alone until {'it is' if one else 'they are'} removed (to "
        f"scale by hand, use scaling.mode Manual instead)",
    )


def initial(conditions: Sequence[Mapping[str, Any]] | None, generation: int, now: str):
    """Add the control loop's conditions as Unknown when they are absent."""
    out = [dict(c) for c in conditions or []]
    for type_ in CONTROL_LOOP_CONDITIONS:
        if find(out, type_) is None:
            out = set_condition(
                out,
                Condition(
                    type_,
                    "Unknown",
                    "AwaitingFirstObservation",
                    "the control loop has not observed this pool yet",
                ),
                generation,
                now,
            )
    return out


def worst_endpoint(
    spec: Mapping[str, Any], endpoints: Sequence[Mapping[str, Any]] | None
) -> str | None:
    slas = {
        e["name"]: e["sla"]["ttftP95Milliseconds"]
        for e in spec.get("endpoints") or []
        if (e.get("sla") or {}).get("ttftP95Milliseconds")
    }
    measured = [
        (
            item["ttftP95Milliseconds"] / slas[item["name"]],
            item["name"],
            item["ttftP95Milliseconds"],
        )
        for item in endpoints or []
        if item.get("name") in slas and isinstance(item.get("ttftP95Milliseconds"), int)
    ]
    if not measured:
        return None
    _, name, p95 = max(measured)
    return f"{name} {p95}/{slas[name]}ms"


def transition_events(
    previous: Sequence[Mapping[str, Any]] | None,
    shown: Iterable[Condition],
    watched: Sequence[str],
) -> list[tuple[str, str, str]]:
    """(Event type, reason, message) for each watched condition whose status or reason moved."""
    events = []
    for condition in shown:
        if condition.type not in watched:
            continue
        before = find(previous, condition.type)
        was = None if before is None else (before.get("status"), before.get("reason"))
        if was == (condition.status, condition.reason):
            continue
        if condition.status == "False":
            events.append(("Warning", condition.reason, condition.message))
        elif condition.status == "True" and was is not None and was[0] == "False":
            events.append(("Normal", condition.reason, condition.message))
    return events
