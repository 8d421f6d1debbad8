"""Reconcile one InferencePool: make its owned objects match the spec, then report in status.

Contract:
- `reconcile(kube, pool, trigger)` applies the admin Secret (created once, its token never
  rewritten), the limits ConfigMap, the worker Deployment, the Service and the
  PodDisruptionBudget with server-side apply (so only fields that differ change, and fields
  someone else changed are taken back), writes the worker count only as `scalers` allows (a
  new Deployment is created at that count, never at the API's default of 1),
  then sets `status` (observedGeneration, replica counts, limits in force, conditions) and posts
  an Event for every object created, updated or restored and every scaling conflict found or
  gone (the status itself is computed by `carpool_operator.status`). Calls for one pool never
  overlap within the process. Idempotent: a second call with nothing changed writes nothing
  and posts nothing. An API error sets Reconciled=False, posts a Warning and raises
  `ReconcileError`.
- `on_owned_object(kube, obj, deleted, trigger)` is for events about an owned object: it
  reconciles the owning pool when the object was deleted or drifted from what the pool wants,
  and otherwise (a Deployment's status moving) only refreshes the pool's status.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from kubernetes.client import ApiException

from carpool_operator import (
    builders,
    conditions,
    drift,
    limits,
    metrics,
    names,
    scalers,
    status,
)
from carpool_operator.kube import Kube, now_rfc3339

Obj = dict[str, Any]
_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


class ReconcileError(RuntimeError):
    """The API server refused an owned object; `retryable` is False for invalid objects."""

    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


def _api_message(error: ApiException) -> str:
    try:
        return json.loads(error.body).get("message") or str(error.reason)
    except (TypeError, ValueError, AttributeError):
        return f"{error.status} {error.reason}"


def _rv(obj: Obj | None) -> str | None:
    return None if obj is None else obj["metadata"].get("resourceVersion")


def _desired_configmap(pool: Obj, live: Obj | None) -> tuple[Obj, dict[str, Any]]:
    status = pool.get("status") or {}
    previous = limits.parse(((live or {}).get("data") or {}).get(names.LIMITS_KEY))
    document = limits.build_limits(
        pool["spec"],
        limits.in_force_from_status(status),
        previous,
        floor_version=int(status.get("limitsVersion") or 0),
    )
    return builders.build_limits_configmap(pool, document), document


DESIRED: dict[str, Callable[[Obj, Obj | None], Obj]] = {
    "Deployment": lambda pool, live: builders.build_deployment(pool),
    "Service": lambda pool, live: builders.build_service(pool),
    "PodDisruptionBudget": lambda pool, live: builders.build_pdb(pool),
    "ConfigMap": lambda pool, live: _desired_configmap(pool, live)[0],
    "Secret": lambda pool, live: builders.build_admin_secret(pool, None),
}


def _name_of(kind: str, pool: str) -> str:
    return {
        "Deployment": names.deployment_name,
        "Service": names.service_name,
        "PodDisruptionBudget": names.pdb_name,
        "ConfigMap": names.limits_configmap_name,
        "Secret": names.admin_secret_name,
    }[kind](pool)


class _Run:
    """One reconcile's bookkeeping: what changed, for events and metrics."""

    def __init__(self, kube: Kube, pool: Obj):
        self.kube, self.pool = kube, pool
        status = pool.get("status") or {}
        # The spec did not change since the last reconcile: any change now undoes someone's edit.
        self.restoring = status.get("observedGeneration") == pool["metadata"].get("generation")
        self.events: list[tuple[str, str, str]] = []

    def record(self, kind: str, name: str, before: Obj | None, after: Obj) -> None:
        if _rv(before) == _rv(after):
            return
        if before is None and not self.restoring:
            action, message = "Created", f"created {kind} {name}"
        elif self.restoring:
            how = "deleted" if before is None else "changed"
            action = "Restored"
            message = f"restored {kind} {name}, which was {how} outside the operator"
        else:
            action, message = "Updated", f"updated {kind} {name} to generation "
            message += str(self.pool["metadata"].get("generation"))
        metrics.count_applied(kind, action.lower())
        self.events.append(("Normal", action, message))

    def apply(self, kind: str, desired: Obj, live: Obj | None) -> Obj:
        try:
            try:
                after = self.kube.apply(desired)
            except ApiException as error:
                if error.status != 422 or live is None:
                    raise
                # Someone's list entry clashes with ours (say, a Service port renumbered with
                # kubectl edit: apply would keep both, with one name twice). Take the object's
                # lists back whole with a merge patch, then apply again to own the fields.
                meta = desired["metadata"]
                body = {k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}
                self.kube.merge_patch(kind, meta["namespace"], meta["name"], body)
                after = self.kube.apply(desired)
        except ApiException as error:
            metrics.count_error(kind)
            raise ReconcileError(
                f"{kind} {desired['metadata']['name']}: {_api_message(error)}",
                retryable=not 400 <= error.status < 500 or error.status in (409, 429),
            ) from error
        self.record(kind, desired["metadata"]["name"], live, after)
        return after


def _ensure_secret(run: _Run, live: Obj | None) -> None:
    pool = run.pool
    if live is None:
        token = secrets.token_urlsafe(32)
        try:
            after = run.kube.create(builders.build_admin_secret(pool, token))
        except ApiException as error:
            if error.status != 409:
                metrics.count_error("Secret")
                raise ReconcileError(f"Secret: {_api_message(error)}", retryable=True) from error
            return  # created concurrently; the next reconcile adopts it
        # Take the metadata under server-side apply now, so the next reconcile is a no-op.
        after = run.kube.apply(builders.build_admin_secret(pool, None))
        run.record("Secret", after["metadata"]["name"], None, after)
        return
    if not (live.get("data") or {}).get(names.ADMIN_TOKEN_KEY):
        data = builders.build_admin_secret(pool, secrets.token_urlsafe(32))["data"]
        live = run.kube.merge_patch(
            "Secret", live["metadata"]["namespace"], live["metadata"]["name"], {"data": data}
        )
    run.apply("Secret", builders.build_admin_secret(pool, None), live)


def _apply_workers(run: _Run, live: Obj | None) -> tuple[Obj, list[str]]:
    """Apply the worker Deployment and, as `scalers` allows, its worker count.

    A new Deployment is created at its count. Created without one, it would run at the API's
    default of 1 until the count is applied, and the control loop, which reads the Deployment
    on its own clock, would publish that 1 as the pool's desired count. The operator's field
    manager then lets go of the count, so that only the scaler's owns it.
    """
    kube, pool = run.kube, run.pool
    namespace, name = pool["metadata"]["namespace"], pool["metadata"]["name"]
    external = scalers.external_scalers(
        names.deployment_name(name),
        kube.list("HorizontalPodAutoscaler", namespace),
        kube.list("ScaledObject", namespace),
    )
    current = None if live is None else live["spec"]["replicas"]
    wanted = scalers.replicas_to_apply(pool["spec"], current, external)
    desired = builders.build_deployment(pool)
    if current is None and wanted is not None:
        desired = {**desired, "spec": {**desired["spec"], "replicas": wanted}}
    deployment = run.apply("Deployment", desired, live)
    if wanted is None:
        return deployment, external
    deployment = kube.apply(
        builders.build_replicas(pool, wanted), manager=names.SCALER_FIELD_MANAGER
    )
    if current is None:
        deployment = kube.apply(builders.build_deployment(pool))
    mode = (pool["spec"].get("scaling") or {}).get("mode", "Auto")
    was = "a new Deployment" if current is None else f"was {current}"
    message = f"set the worker count to {wanted} (scaling.mode {mode}, {was})"
    run.events.append(("Normal", "Scaled", message))
    return deployment, external


def reconcile(kube: Kube, pool: Obj, trigger: str) -> Obj | None:
    meta = pool["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    with _locks[(namespace, name)], metrics.observe(trigger):
        fresh = kube.get("InferencePool", namespace, name)
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return None
        return _reconcile(kube, fresh)


def _reconcile(kube: Kube, pool: Obj) -> Obj | None:
    meta = pool["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    run = _Run(kube, pool)
    live = {kind: kube.get(kind, namespace, _name_of(kind, name)) for kind in DESIRED}
    error: ReconcileError | None = None
    document: dict[str, Any] | None = None
    deployment = live["Deployment"]
    external: list[str] = []
    try:
        _ensure_secret(run, live["Secret"])
        configmap, document = _desired_configmap(pool, live["ConfigMap"])
        run.apply("ConfigMap", configmap, live["ConfigMap"])
        deployment, external = _apply_workers(run, live["Deployment"])
        run.apply("Service", builders.build_service(pool), live["Service"])
        run.apply("PodDisruptionBudget", builders.build_pdb(pool), live["PodDisruptionBudget"])
    except ReconcileError as caught:
        error = caught
        run.events.append(("Warning", "ReconcileFailed", str(caught)))
    except ApiException as caught:
        metrics.count_error("other")
        error = ReconcileError(_api_message(caught), retryable=True)
        run.events.append(("Warning", "ReconcileFailed", str(error)))

    previous_conflict = conditions.find(
        (pool.get("status") or {}).get("conditions"), conditions.SCALER_CONFLICT
    )
    conflict = conditions.scaler_conflict(external, names.deployment_name(name))
    if error is None and (previous_conflict or {}).get("status") != conflict.status:
        if conflict.status == "True":
            run.events.append(("Warning", "ExternalScalerFound", conflict.message))
        elif previous_conflict is not None:
            run.events.append(("Normal", "ExternalScalerRemoved", conflict.message))

    def mutate(current: Obj) -> Obj:
        message = None if error is None else str(error)
        generation = meta.get("generation", 0)
        return status.build_status(
            current, generation, deployment, document, conflict, message, now_rfc3339()
        )

    try:
        result = kube.update_pool_status(namespace, name, mutate)
    except ApiException:
        metrics.count_error("status")
        raise
    for type_, reason, message in run.events:
        try:
            kube.post_event(pool, type_, reason, message)
        except ApiException:
            metrics.count_error("event")
    if error is not None:
        raise error
    return result


def on_owned_object(kube: Kube, obj: Obj, deleted: bool, trigger: str) -> None:
    meta = obj.get("metadata") or {}
    pool_name = names.pool_of(meta)
    kind = obj.get("kind")
    if pool_name is None or kind not in DESIRED:
        return
    pool = kube.get("InferencePool", meta["namespace"], pool_name)
    if pool is None or pool["metadata"].get("deletionTimestamp"):
        return  # the pool is gone: garbage collection removes its objects
    desired = DESIRED[kind](pool, obj)
    if deleted or not drift.contains(obj, desired):
        reconcile(kube, pool, trigger)
    elif kind == "Deployment":

        def mutate(current: Obj) -> Obj | None:
            now_status = current.get("status") or {}
            if "observedGeneration" not in now_status:
                return None  # the first reconcile has not run yet; it sets all of status
            generation = now_status["observedGeneration"]
            return status.deployment_status(
                current["spec"], now_status, obj, generation, now_rfc3339()
            )

        kube.update_pool_status(meta["namespace"], pool_name, mutate)
