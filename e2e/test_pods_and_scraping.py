"""Pods bound to GPU nodes run, report readiness and IPs, and Prometheus finds them by itself.

On the local control plane the process kubelet runs them; on any other cluster the same
manifests run in ``python:3.11-slim`` containers.
"""

from __future__ import annotations

import httpx
from kubernetes import client

from carpool_cluster.testing import wait_for

METRICS_TEXT = "# TYPE carpool_e2e_marker gauge\ncarpool_e2e_marker 42\n"


def metrics_pod(name: str, annotations: dict[str, str]) -> dict:
    """A pod serving a ConfigMap's file as /metrics, with a readiness probe on it."""
    container = {
        "name": "server",
        "image": "python:3.11-slim",
        "command": ["python3", "-m", "http.server"],
        "args": ["--bind", "$(POD_IP)", "--directory", "/srv/metrics", "8080"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/metrics", "port": "http"}, "periodSeconds": 1},
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
        "volumeMounts": [{"name": "content", "mountPath": "/srv/metrics"}],
    }
    return {
        "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
        "spec": {
            "containers": [container],
            "volumes": [{"name": "content", "configMap": {"name": name}}],
            "terminationGracePeriodSeconds": 5,
        },
    }


def ready_pod(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, namespace)
    conditions = {c.type: c.status for c in pod.status.conditions or []}
    return pod if conditions.get("Ready") == "True" else None


def test_pod_on_a_gpu_node_runs_and_becomes_ready_at_its_own_ip(
    api: client.ApiClient, namespace: str, gpu_nodes: None
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "web"}, "data": {"metrics": METRICS_TEXT}}
    )
    core.create_namespaced_pod(namespace, metrics_pod("web", {}))

    pod = wait_for("the pod to be Ready", lambda: ready_pod(core, namespace, "web"), 90)

    assert pod.status.pod_ip
    body = httpx.get(f"http://{pod.status.pod_ip}:8080/metrics", timeout=5).text
    assert "carpool_e2e_marker 42" in body


def test_deleting_a_pod_stops_its_process(
    api: client.ApiClient, namespace: str, gpu_nodes: None
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "brief"}, "data": {"metrics": METRICS_TEXT}}
    )
    core.create_namespaced_pod(namespace, metrics_pod("brief", {}))
    pod = wait_for("the pod to be Ready", lambda: ready_pod(core, namespace, "brief"), 90)
    address = f"http://{pod.status.pod_ip}:8080/metrics"

    core.delete_namespaced_pod("brief", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("brief", namespace)
            return False
        except client.ApiException as error:
            return error.status == 404

    wait_for("the pod object to be removed", gone, 60)
    try:
        httpx.get(address, timeout=2)
        still_serving = True
    except httpx.TransportError:
        still_serving = False
    assert not still_serving


def test_prometheus_discovers_and_scrapes_an_annotated_pod(
    api: client.ApiClient, namespace: str, gpu_nodes: None, prometheus_url: str
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "scraped"}, "data": {"metrics": METRICS_TEXT}}
    )
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    core.create_namespaced_pod(namespace, metrics_pod("scraped", annotations))
    wait_for("the pod to be Ready", lambda: ready_pod(core, namespace, "scraped"), 90)

    def scraped_value() -> float | None:
        query = f'carpool_e2e_marker{{namespace="{namespace}",pod="scraped"}}'
        result = httpx.get(
            f"{prometheus_url}/api/v1/query", params={"query": query}, timeout=5
        ).json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    assert wait_for("Prometheus to scrape the pod", scraped_value, 60) == 42.0
