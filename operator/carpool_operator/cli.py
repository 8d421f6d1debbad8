"""``carpool operator [OPTIONS]``: run the InferencePool operator until SIGINT/SIGTERM (kopf
handles both: it stops the handlers and leaves the peering before exiting).

Contract: `main(argv) -> int` loads credentials (in-cluster, else $KUBECONFIG), creates kopf's
peering object if it is missing (unless --standalone), serves the operator's Prometheus metrics
on --metrics-port and kopf's liveness endpoint on --health-port (GET /healthz), and runs kopf
with carpool's handlers over all namespaces or the --namespace ones. Returns 0 on a clean stop,
1 when the operator could not start (the reason is logged).
"""

from __future__ import annotations

import asyncio
import logging
import sys

import kopf
from kubernetes.client import ApiException

from carpool_operator import control_handlers, handlers, kube, metrics, settings

log = logging.getLogger("carpool.operator")


async def _run(config: settings.OperatorConfig, client: kube.Kube) -> None:
    registry = kopf.OperatorRegistry()
    handlers.register(registry, config)
    control_handlers.register(registry, config)
    operator_settings = kopf.OperatorSettings()
    settings.configure(operator_settings, config)
    await kopf.operator(
        registry=registry,
        settings=operator_settings,
        clusterwide=config.clusterwide,
        namespaces=list(config.namespaces),
        standalone=config.standalone,
        priority=config.priority,
        peering_name=None if config.standalone else config.peering_name,
        liveness_endpoint=f"http://{config.bind_address}:{config.health_port}/healthz",
        memo=kopf.Memo(kube=client, config=config),
    )


def main(argv: list[str]) -> int:
    config = settings.parse(argv)
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    client = kube.Kube(kube.load_api_client())
    if not config.standalone:
        try:
            for namespace in config.namespaces or (None,):
                if namespace is not None and any(c in namespace for c in "*?[!"):
                    continue  # a glob: the peering object must be made per namespace
                if client.ensure_peering(config.peering_name, namespace):
                    log.info(
                        "created peering object %s in %s",
                        config.peering_name,
                        namespace or "the cluster",
                    )
        except ApiException as error:
            log.error(
                "cannot create kopf's peering object %r: %s %s (are the CRDs in "
                "crds/kopf.dev_peerings.yaml installed?)",
                config.peering_name,
                error.status,
                error.reason,
            )
            return 1
    metrics.serve(config.metrics_port, config.bind_address)
    log.info(
        "carpool operator: priority %d, %s, metrics on :%d, liveness on :%d/healthz",
        config.priority,
        "all namespaces" if config.clusterwide else "namespaces " + ", ".join(config.namespaces),
        config.metrics_port,
        config.health_port,
    )
    asyncio.run(_run(config, client))
    return 0
