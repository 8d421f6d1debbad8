"""Run a real Prometheus, built from its Go module, that discovers pods through the API server.

Contract: ``start(state)`` grants Prometheus's client identity read access to pods, writes a
config whose only targets come from ``kubernetes_sd_configs`` (pods annotated
``prometheus.io/scrape: "true"``, scraped at ``prometheus.io/port``/``prometheus.io/path``), starts
``prometheus`` on a free loopback port, waits for ``/-/ready`` and records the process in the
cluster state. There are no static target lists: a pod is scraped because the API server
says it exists.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import yaml
from kubernetes import client, config

from carpool_cluster import binaries, processes
from carpool_cluster.controlplane import ClusterState

SCRAPE_INTERVAL = "2s"  # short, so a local closed loop reacts within seconds
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
