"""Run a real Prometheus, built from its Go module, that discovers pods through the API server.

Contract: ``start(state)`` grants Prometheus's client identity read access to pods, writes a
config whose only targets come from ``kubernetes_sd_configs`` (pods annotated
``prometheus.io/scrape: "true"``, scraped at ``prometheus.io/port``/``prometheus.io/path``), starts
``prometheus`` on a free loopback port, waits for ``/-/ready`` and records the process in the
cluster state. There are no static target lists: a pod is scraped because the API server
says it exists.

For tests of what the operator does with a Prometheus that is set up differently,
``start_federating(folder, source_url, ...)`` starts another real Prometheus that takes the
workers' series from ``source_url`` (federation keeps their ``instance`` and, unless dropped,
their labels and timestamps): with ``drop_labels`` it holds them without those labels (a scrape
without relabelling), with a long ``scrape_interval`` its samples are old, with
``federate=False`` it holds nothing of them, and with ``web_config`` (Prometheus'
``--web.config.file``: ``basic_auth_users``, ``tls_server_config``) it refuses anonymous or
plain-HTTP queries. ``stop_instance(record)`` stops it. Works against any cluster's Prometheus.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import yaml
from kubernetes import client, config

from carpool_cluster import binaries, processes
from carpool_cluster.controlplane import ClusterState

SCRAPE_INTERVAL = "2s"  # short, so a local closed loop reacts within seconds


def scrape_interval_seconds() -> float:
    return float(SCRAPE_INTERVAL.removesuffix("s"))


PROMETHEUS_USER = "carpool:prometheus"

DISCOVERY_RULES = [
    {
        "apiGroups": [""],
        "resources": ["pods", "services", "endpoints", "nodes"],
        "verbs": ["get", "list", "watch"],
    },
]


def scrape_config(state: ClusterState, rule_files: list[str] | None = None) -> dict:
    sd = {
        "role": "pod",
        "api_server": state.server,
        "tls_config": {
            "ca_file": state.ca_file,
            "cert_file": state.prometheus_cert,
            "key_file": state.prometheus_key,
        },
    }
    relabel = [
        {
            "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
            "regex": "true",
            "action": "keep",
        },
        {"source_labels": ["__meta_kubernetes_pod_phase"], "regex": "Running", "action": "keep"},
        {
            "source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
            "regex": "(.+)",
            "target_label": "__metrics_path__",
        },
        {
            "source_labels": [
                "__meta_kubernetes_pod_ip",
                "__meta_kubernetes_pod_annotation_prometheus_io_port",
            ],
            "regex": "(.+);(\\d+)",
            "replacement": "$1:$2",
            "target_label": "__address__",
        },
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_label_carpool_dev_pool"], "target_label": "pool"},
    ]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": rule_files or [],
        "scrape_configs": [
            {
                "job_name": "carpool-pods",
                "kubernetes_sd_configs": [sd],
                "relabel_configs": relabel,
                # The operator labels its series with the pool they describe (namespace, pool).
                "honor_labels": True,
                # Targets that do not name their format are read as the classic text format.
                "fallback_scrape_protocol": "PrometheusText0.0.4",
            },
        ],
    }


def grant_discovery(state: ClusterState) -> None:
    api = config.new_client_from_config(config_file=state.kubeconfig)
    rbac = client.RbacAuthorizationV1Api(api)
    role = {"metadata": {"name": "carpool-prometheus-discovery"}, "rules": DISCOVERY_RULES}
    binding = {
        "metadata": {"name": "carpool-prometheus-discovery"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "carpool-prometheus-discovery",
        },
        "subjects": [
            {"kind": "User", "name": PROMETHEUS_USER, "apiGroup": "rbac.authorization.k8s.io"}
        ],
    }
    for create, body in (
        (rbac.create_cluster_role, role),
        (rbac.create_cluster_role_binding, binding),
    ):
        try:
            create(body)
        except client.ApiException as error:
            if error.status != 409:
                raise


def start(state: ClusterState, rule_files: list[str] | None = None) -> str:
    """Start Prometheus for ``state``'s cluster; return its base URL."""
    binary = binaries.ensure_binaries().prometheus
    grant_discovery(state)
    folder = Path(state.state_dir) / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(scrape_config(state, rule_files), sort_keys=False))
    previous = state.processes.get("prometheus")
    # A restart keeps its address, as a Prometheus Service would: clients need no new URL.
    port = previous.port if previous is not None and previous.port else processes.free_port()
    record = processes.start(
        "prometheus",
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ],
        Path(state.state_dir) / "logs" / "prometheus.log",
        port=port,
    )
    url = f"http://127.0.0.1:{port}"
    processes.wait_until(
        "Prometheus /-/ready",
        lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200,
        60,
        record,
    )
    state.processes["prometheus"] = record
    state.save()
    return url


def stop(state: ClusterState) -> bool:
    """Stop this cluster's Prometheus (its data stays); ``start`` brings it back."""
    record = state.processes.get("prometheus")
    return record is not None and processes.stop(record)


def url_of(state: ClusterState) -> str | None:
    record = state.processes.get("prometheus")
    if record is None or not processes.is_running(record):
        return None
    return f"http://127.0.0.1:{record.port}"


def federation_config(
    source_url: str,
    *,
    scrape_interval: str = SCRAPE_INTERVAL,
    drop_labels: tuple[str, ...] = (),
    federate: bool = True,
) -> dict:
    """A Prometheus config that copies the carpool series of ``source_url``."""
    if not federate:
        return {"global": {"scrape_interval": scrape_interval}, "scrape_configs": []}
    scheme, _, host = source_url.partition("://")
    job: dict = {
        "job_name": "federate-carpool",
        "honor_labels": True,
        "metrics_path": "/federate",
        "scheme": scheme,
        "params": {"match[]": ['{__name__=~"carpool_.+|up"}']},
        "static_configs": [{"targets": [host.rstrip("/")]}],
    }
    if drop_labels:
        job["metric_relabel_configs"] = [{"regex": "|".join(drop_labels), "action": "labeldrop"}]
    return {
        "global": {"scrape_interval": scrape_interval},
        "scrape_configs": [job],
    }


def start_federating(
    folder: Path,
    name: str,
    source_url: str,
    *,
    scrape_interval: str = SCRAPE_INTERVAL,
    drop_labels: tuple[str, ...] = (),
    federate: bool = True,
    web_config: dict | None = None,
) -> tuple[processes.ProcessRecord, str]:
    """Start a Prometheus in ``folder/name`` federating ``source_url``; return it and its URL."""
    binary = binaries.ensure_binaries().prometheus
    home = folder / name
    home.mkdir(parents=True, exist_ok=True)
    config_path = home / "prometheus.yml"
    config = federation_config(
        source_url, scrape_interval=scrape_interval, drop_labels=drop_labels, federate=federate
    )
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = processes.free_port()
    argv = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    scheme = "http"
    if web_config is not None:
        web_path = home / "web.yml"
        web_path.write_text(yaml.safe_dump(web_config, sort_keys=False))
        argv.append(f"--web.config.file={web_path}")
        scheme = "https" if "tls_server_config" in web_config else "http"
    record = processes.start(f"prometheus-{name}", argv, home / "prometheus.log", port=port)
    processes.wait_until(
        f"Prometheus {name} listening",
        lambda: _listening(port),
        60,
        record,
    )
    return record, f"{scheme}://127.0.0.1:{port}"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def stop_instance(record: processes.ProcessRecord) -> bool:
    return processes.stop(record)
