"""Who sets a pool's worker count: carpool, the user (Manual), or an outside autoscaler.

Contract (pure):
- `external_scalers(deployment, hpas, scaled_objects)` names every HorizontalPodAutoscaler and
  KEDA ScaledObject (as "Kind/name") whose scale target is the pool's worker Deployment.
- `replicas_to_apply(spec, current, external)` is the worker count reconcile writes, or None
  to leave it alone: never while an outside autoscaler targets the Deployment (no fights), the
  spec's `manualReplicas` in Manual mode, the current count clamped into `replicas.min..max` in
  Auto mode (the control loop moves it within them), and in Recommend mode only a first count
  (`replicas.min`) for a Deployment that does not exist yet. None also when nothing changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def _targets(ref: Mapping[str, Any], deployment: str, default_kind: str | None) -> bool:
    kind = ref.get("kind", default_kind)
    api_version = ref.get("apiVersion", "apps/v1")
    return (
        kind == "Deployment" and ref.get("name") == deployment and api_version.startswith("apps/")
    )


def external_scalers(
    deployment: str,
    hpas: Iterable[Mapping[str, Any]],
    scaled_objects: Iterable[Mapping[str, Any]] = (),
) -> list[str]:
    found = []
    for hpa in hpas:
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if _targets(ref, deployment, default_kind=None):
            found.append(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}")
    for scaled in scaled_objects:
        # KEDA's scaleTargetRef defaults to a Deployment when kind is left out.
        ref = (scaled.get("spec") or {}).get("scaleTargetRef") or {}
        if _targets(ref, deployment, default_kind="Deployment"):
            found.append(f"ScaledObject/{scaled['metadata']['name']}")
    return sorted(found)


def replicas_to_apply(
    spec: Mapping[str, Any], current: int | None, external: Sequence[str]
) -> int | None:
    """`current` is the Deployment's spec.replicas, None when the Deployment is new."""
    if external:
        return None
    scaling = spec.get("scaling") or {}
    mode = scaling.get("mode", "Auto")
    bounds = spec.get("replicas") or {}
    low, high = int(bounds.get("min", 1)), int(bounds.get("max", 8))
    if mode == "Manual":
        wanted = int(scaling["manualReplicas"])
    elif current is None:
        wanted = low
    elif mode == "Auto":
        wanted = max(low, min(high, current))
    else:  # Recommend: the count is the user's once the Deployment exists.
        return None
    return None if wanted == current else wanted
