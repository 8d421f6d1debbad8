"""kopf handlers: thin, each one line of domain code (reconcile) plus error translation.

Contract: `register(registry, config)` adds to a kopf registry
- create/update/resume of an InferencePool -> `reconcile.reconcile`;
- a timer per pool every `config.resync_seconds` -> `reconcile.reconcile` (restores what is not
  watched, the admin Secret, and catches anything missed);
- events of the Deployments, Services, ConfigMaps and PodDisruptionBudgets the operator owns
  (watched with a server-side label selector) -> `reconcile.on_owned_object`;
- events of HorizontalPodAutoscalers that target a pool's worker Deployment ->
  `reconcile.reconcile` of that pool (the ScalerConflict condition and Event). KEDA's
  ScaledObjects are not watched: reconcile lists them (none when KEDA's CRD is absent), KEDA
  makes an HPA for each (which is watched), and a watch on a CRD that gets deleted would stop
  kopf altogether;
- login with the kubernetes client's credentials;
- a liveness probe (kopf's endpoint; answering proves the event loop is responsive).
The handlers hold no state; `memo.kube` is the API client (carpool_operator.kube.Kube).
"""

from __future__ import annotations

from typing import Any

import kopf

from carpool_operator import names, reconcile
from carpool_operator.settings import OWNED_RESOURCES, OperatorConfig

POOLS = (names.GROUP, names.VERSION, names.PLURAL)
HPAS = ("autoscaling", "v2", "horizontalpodautoscalers")
MANAGED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}


def _reconcile(memo: Any, body: kopf.Body, trigger: str) -> None:
    try:
        reconcile.reconcile(memo.kube, dict(body), trigger)
    except reconcile.ReconcileError as error:
        if error.retryable:
            raise kopf.TemporaryError(str(error), delay=15) from error
        raise kopf.PermanentError(str(error)) from error


def _reconcile_target(memo: Any, namespace: str, spec: dict, trigger: str) -> None:
    """Reconcile the pool whose worker Deployment an autoscaler targets, if any."""
    target = (spec or {}).get("scaleTargetRef") or {}
    deployment = target.get("name") or ""
    suffix = names.deployment_name("")
    if not deployment.endswith(suffix):
        return
    pool = memo.kube.get("InferencePool", namespace, deployment[: -len(suffix)])
    if pool is not None:
        _reconcile(memo, pool, trigger)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    @kopf.on.login(registry=registry, id="login")
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # The same credentials as the kubernetes client's: in-cluster, else $KUBECONFIG.
        return kopf.login_via_client(**kwargs)

    @kopf.on.resume(*POOLS, registry=registry, id="pool")
    @kopf.on.create(*POOLS, registry=registry, id="pool")
    @kopf.on.update(*POOLS, registry=registry, id="pool")
    def pool_changed(body: kopf.Body, memo: Any, reason: str, **_: Any) -> None:
        _reconcile(memo, body, str(reason))

    @kopf.timer(
        *POOLS,
        interval=config.resync_seconds,
        initial_delay=config.resync_seconds,
        registry=registry,
    )
    def pool_resync(body: kopf.Body, memo: Any, **_: Any) -> None:
        _reconcile(memo, body, "resync")

    for resource in OWNED_RESOURCES:

        @kopf.on.event(*resource, labels=MANAGED, registry=registry, id=f"owned-{resource[-1]}")
        def owned_changed(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
            reconcile.on_owned_object(memo.kube, dict(body), type == "DELETED", "owned")

    @kopf.on.event(*HPAS, registry=registry, id="hpa")
    def hpa_changed(body: kopf.Body, namespace: str, memo: Any, **_: Any) -> None:
        _reconcile_target(memo, namespace, dict(body.spec), "autoscaler")

    @kopf.on.probe(id="peering", registry=registry)
    def peering(**_: Any) -> dict[str, Any]:
        # Served from the operator's event loop: an answer means the loop is responsive.
        return {"name": config.peering_name, "priority": config.priority}
