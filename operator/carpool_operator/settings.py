"""The operator's configuration: command-line options and the kopf settings they imply.

Contract: `parse(argv)` returns an `OperatorConfig` (defaults suit a Deployment of the chart);
`configure(settings, config)` sets kopf's settings so that kopf keeps its progress and diff
base in annotations prefixed `carpool.dev` (the pool's `status` holds only carpool's fields),
posts no Events of its own (the operator posts its own, see docs/operator.md), watches the
objects the operator owns with a server-side label selector, and joins peering under
`config.peering_name` so that of several replicas exactly one is active.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random

import kopf

from carpool_operator import names

# kopf resource selectors of the kinds the operator owns and watches.
OWNED_RESOURCES = (
    ("apps", "v1", "deployments"),
    ("v1", "services"),
    ("v1", "configmaps"),
    ("policy", "v1", "poddisruptionbudgets"),
)


@dataclasses.dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    peering_name: str = "carpool"
    standalone: bool = False
    priority: int = 0
    peering_lifetime_seconds: int = 60
    metrics_port: int = 8080
    health_port: int = 8081
    bind_address: str = "0.0.0.0"
    resync_seconds: float = 60.0
    prometheus_url: str = ""
    log_level: str = "INFO"

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carpool operator", description="Run the InferencePool operator (kopf)."
    )
    env = os.environ.get
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="serve only this namespace (repeat for several; globs allowed); default: all",
    )
    parser.add_argument(
        "--peering",
        dest="peering_name",
        default=env("CARPOOL_PEERING", "carpool"),
        help="the kopf peering object shared by the operator's replicas",
    )
    parser.add_argument(
        "--standalone", action="store_true", help="no peering: for a single replica only"
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority; the highest live replica is active (default: random, so two "
        "replicas never tie)",
    )
    parser.add_argument(
        "--peering-lifetime-seconds",
        type=int,
        default=60,
        help="how long a silent replica counts as alive",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=int(env("CARPOOL_METRICS_PORT", "8080"))
    )
    parser.add_argument("--health-port", type=int, default=int(env("CARPOOL_HEALTH_PORT", "8081")))
    parser.add_argument("--bind-address", default="0.0.0.0")
    parser.add_argument(
        "--resync-seconds",
        type=float,
        default=60.0,
        help="re-apply every pool this often (restores objects the operator does not watch)",
    )
    parser.add_argument(
        "--prometheus-url",
        default=env("CARPOOL_PROMETHEUS_URL", ""),
        help="Prometheus for pools that do not set spec.prometheus.url",
    )
    parser.add_argument(
        "--log-level",
        default=env("CARPOOL_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    return parser


def parse(argv: list[str]) -> OperatorConfig:
    args = _parser().parse_args(argv)
    priority = args.priority if args.priority is not None else random.randint(1, 2**30)
    return OperatorConfig(
        namespaces=tuple(args.namespace),
        peering_name=args.peering_name,
        standalone=args.standalone,
        priority=priority,
        peering_lifetime_seconds=args.peering_lifetime_seconds,
        metrics_port=args.metrics_port,
        health_port=args.health_port,
        bind_address=args.bind_address,
        resync_seconds=args.resync_seconds,
        prometheus_url=args.prometheus_url,
        log_level=args.log_level,
    )


def configure(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=names.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=names.GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{names.GROUP}/operator"
    settings.posting.enabled = False
    settings.peering.name = config.peering_name
    settings.peering.standalone = config.standalone
    settings.peering.mandatory = not config.standalone
    settings.peering.clusterwide = config.clusterwide
    settings.peering.priority = config.priority
    settings.peering.lifetime = config.peering_lifetime_seconds
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    for resource in OWNED_RESOURCES:
        settings.watching.label_selectors[resource] = names.MANAGED_SELECTOR
    logging.getLogger().setLevel(config.log_level)
    if config.log_level != "DEBUG":
        # kopf logs every successful handler call; the operator's Events say what changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
