"""The operator's configuration: command-line options and the kopf settings they imply.

Contract: `parse(argv)` returns an `OperatorConfig` (defaults suit a Deployment of the chart);
`configure(settings, config)` sets kopf's settings so that kopf keeps its progress and diff
base in annotations prefixed `carpool.dev` (the pool's `status` holds only carpool's fields),
posts no Events of its own (the operator posts its own, see docs/operator.md), watches the
objects the operator owns with a server-side label selector, and joins peering under
`config.peering_name` so that of several replicas exactly one is active.
`config.prometheus_access()` is how the control loop reaches `--prometheus-url`: the
credentials, CA and headers of the `--prometheus-*` options (files are read at each query, so a
mounted Secret can rotate). `--prometheus-insecure-skip-verify` is logged as a warning at start.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random

import kopf

from carpool_operator import names
from carpool_operator.prometheus import PrometheusAccess

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
    prometheus_bearer_token_file: str = ""
    prometheus_basic_auth_username: str = ""
    prometheus_basic_auth_password_file: str = ""
    prometheus_ca_file: str = ""
    prometheus_insecure_skip_verify: bool = False
    prometheus_headers: tuple[tuple[str, str], ...] = ()
    gpu_hour_price: str = ""
    log_level: str = "INFO"

    def prometheus_access(self) -> PrometheusAccess:
        return PrometheusAccess(
            url=self.prometheus_url,
            bearer_token_file=self.prometheus_bearer_token_file,
            basic_auth_username=self.prometheus_basic_auth_username,
            basic_auth_password_file=self.prometheus_basic_auth_password_file,
            ca_file=self.prometheus_ca_file,
            insecure_skip_verify=self.prometheus_insecure_skip_verify,
            headers=self.prometheus_headers,
        )

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
    _prometheus_access_arguments(parser)
    parser.add_argument(
        "--gpu-hour-price",
        default=env("CARPOOL_GPU_HOUR_PRICE", ""),
        type=_decimal,
        help="price of one GPU for an hour, for pools without spec.cost.gpuHourPrice: the fuel "
        "ledger's cost per million tokens (carpool_endpoint_cost_per_million_tokens)",
    )
    parser.add_argument(
        "--log-level",
        default=env("CARPOOL_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )
    return parser


def _prometheus_access_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Prometheus access (sent only to --prometheus-url, never to a pool's spec.prometheus.url)"
    )
    group.add_argument(
        "--prometheus-bearer-token-file", default="", help="file holding a bearer token"
    )
    group.add_argument("--prometheus-basic-auth-username", default="", help="basic auth user")
    group.add_argument(
        "--prometheus-basic-auth-password-file", default="", help="file holding its password"
    )
    group.add_argument(
        "--prometheus-ca-file", default="", help="CA bundle that verifies Prometheus' TLS"
    )
    group.add_argument(
        "--prometheus-insecure-skip-verify",
        action="store_true",
        help="do not verify Prometheus' TLS certificate (logged as a warning)",
    )
    group.add_argument(
        "--prometheus-header",
        action="append",
        default=[],
        type=_header,
        metavar="NAME=VALUE",
        help="an extra request header, e.g. X-Scope-OrgID=team-a (repeat for several)",
    )


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or any(c in name for c in " :\r\n"):
        raise argparse.ArgumentTypeError(f"{text!r}: write a header as NAME=VALUE")
    return name.strip(), value


def _decimal(text: str) -> str:
    try:
        if text and float(text) < 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a price is a decimal number >= 0") from None
    return text


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
        prometheus_bearer_token_file=args.prometheus_bearer_token_file,
        prometheus_basic_auth_username=args.prometheus_basic_auth_username,
        prometheus_basic_auth_password_file=args.prometheus_basic_auth_password_file,
        prometheus_ca_file=args.prometheus_ca_file,
        prometheus_insecure_skip_verify=args.prometheus_insecure_skip_verify,
        prometheus_headers=tuple(args.prometheus_header),
        gpu_hour_price=args.gpu_hour_price,
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
