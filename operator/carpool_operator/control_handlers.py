"""kopf wiring of the control loop: one daemon per InferencePool, at the pool's own interval.

Contract: ``register(registry, config)`` adds a daemon that, while a pool exists and this
operator replica is the active peer, runs ``control.control_step`` off the event loop every
``spec.scaling.intervalSeconds`` (re-read each round, so a spec change takes effect at the next
step). A failing step is logged, counted in ``carpool_control_errors_total`` and retried at
the next interval: it never stops the loop. When the daemon ends (the pool deleted, or this
replica no longer the active peer) the pool's series leave its metrics
(``control_metrics.forget``). All pools share one ``MetricsCache``, so their
PromQL is one batch per Prometheus per round. ``CARPOOL_RATE_WINDOW`` (default ``1m``) is the
PromQL rate window. The operator's Prometheus access (credentials, CA, headers) comes from
``config``; turning TLS verification off is logged as a warning once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from carpool_operator import control, control_metrics, names
from carpool_operator.settings import OperatorConfig
from carpool_policy import PoolSpec

POOLS = (names.GROUP, names.VERSION, names.PLURAL)
DEFAULT_INTERVAL_SECONDS = 15.0


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    cache = control.MetricsCache(window=os.environ.get("CARPOOL_RATE_WINDOW", "1m"))
    access = config.prometheus_access()
    if access.insecure_skip_verify:
        logging.getLogger("carpool.control").warning(
            "TLS verification of Prometheus at %s is off (--prometheus-insecure-skip-verify): "
            "anyone between the operator and Prometheus can read and change the metrics it "
            "scales on; give it the CA bundle instead (--prometheus-ca-file)",
            access.url or "the pools' spec.prometheus.url",
        )

    @kopf.daemon(*POOLS, registry=registry, id="control", cancellation_timeout=10)
    async def control_loop(
        name: str,
        namespace: str,
        memo: Any,
        stopped: kopf.DaemonStopped,
        logger: Any,
        **_: Any,
    ) -> None:
        try:
            while not stopped:
                interval = DEFAULT_INTERVAL_SECONDS
                try:
                    pool = await asyncio.to_thread(memo.kube.get, "InferencePool", namespace, name)
                    if pool is None:
                        return
                    spec = PoolSpec.from_crd(pool.get("spec") or {})
                    interval = float(spec.scaling.interval_seconds)
                    await asyncio.to_thread(
                        control.control_step, memo.kube, pool, cache, access, config.gpu_hour_price
                    )
                except Exception as error:  # one bad round must not end the pool's control loop
                    control_metrics.count_error(namespace, name)
                    logger.warning(f"control step failed, retrying in {interval:.0f}s: {error!r}")
                await stopped.wait(interval)
        finally:
            control_metrics.forget(namespace, name)
