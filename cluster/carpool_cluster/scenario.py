"""Set up carpool on a cluster the way an SRE would, for the demo and the end-to-end tests.

Contract: ``install_crds(kubectl, kubeconfig)`` applies ``crds/`` server-side.
``operator_kubeconfig(api, cluster_server, ca_file, folder)`` creates the operator's
ServiceAccount bound to exactly the rules of ``charts/carpool/files/operator-rbac.yaml`` (the
chart's single source) and returns a kubeconfig for that identity: the operator never runs as
admin. ``start_operator(...)`` runs ``carpool operator`` under it as a recorded process.
``apply_pool(api, namespace, manifest)`` creates or replaces an InferencePool and the profile
ConfigMap it names. ``pool_snapshot(api, namespace, name)`` reads what the demo and the tests
watch: replicas and the pool's status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from carpool_cluster import processes
from carpool_cluster.kubeconfig import service_account_kubeconfig

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
RBAC_RULES = REPO / "charts" / "carpool" / "files" / "operator-rbac.yaml"
PROFILES = REPO / "profiles"
OPERATOR_NAMESPACE = "carpool-system"
OPERATOR_ACCOUNT = "carpool-operator"
GROUP, VERSION, PLURAL = "carpool.dev", "v1alpha1", "inferencepools"
# The operator's PromQL rate window on the local cluster: short, as its scrapes are.
RATE_WINDOW_SECONDS = 20


def install_crds(kubectl: Path, kubeconfig: Path) -> None:
    subprocess.run(
        [
            str(kubectl),
            "--kubeconfig",
            str(kubeconfig),
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(CRDS),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    subprocess.run(
        [
            str(kubectl),
            "--kubeconfig",
            str(kubeconfig),
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            str(CRDS),
        ],
        check=True,
        capture_output=True,
        text=True,
    )


def _create(create, *args) -> None:
    try:
        create(*args)
    except client.ApiException as error:
        if error.status != 409:
            raise


def operator_kubeconfig(api: client.ApiClient, server: str, ca_file: str, folder: Path) -> Path:
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    rules = yaml.safe_load(RBAC_RULES.read_text())
    _create(core.create_namespace, {"metadata": {"name": OPERATOR_NAMESPACE}})
    _create(
        core.create_namespaced_service_account,
        OPERATOR_NAMESPACE,
        {"metadata": {"name": OPERATOR_ACCOUNT}},
    )
    role = {"metadata": {"name": OPERATOR_ACCOUNT}, "rules": rules}
    try:
        rbac.create_cluster_role(role)
    except client.ApiException as error:
        if error.status != 409:
            raise
        rbac.replace_cluster_role(OPERATOR_ACCOUNT, role)
    _create(
        rbac.create_cluster_role_binding,
        {
            "metadata": {"name": OPERATOR_ACCOUNT},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": OPERATOR_ACCOUNT,
            },
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": OPERATOR_ACCOUNT,
                    "namespace": OPERATOR_NAMESPACE,
                }
            ],
        },
    )
    return service_account_kubeconfig(
        api,
        folder / "operator.kubeconfig",
        server,
        Path(ca_file),
        OPERATOR_ACCOUNT,
        OPERATOR_NAMESPACE,
        lifetime_seconds=24 * 3600,
    )


def start_operator(
    kubeconfig: Path,
    prometheus_url: str,
    log: Path,
    *,
    rate_window: str = f"{RATE_WINDOW_SECONDS}s",
    name: str = "operator",
    extra_args: tuple[str, ...] = (),
) -> processes.ProcessRecord:
    """Run ``carpool operator`` as the given identity, with free ports for its endpoints."""
    env = dict(os.environ, KUBECONFIG=str(kubeconfig), CARPOOL_RATE_WINDOW=rate_window)
    return processes.start(
        name,
        [
            sys.executable,
            "-m",
            "carpool_cli.main",
            "operator",
            "--prometheus-url",
            prometheus_url,
            "--bind-address",
            "127.0.0.1",
            "--metrics-port",
            str(processes.free_port()),
            "--health-port",
            str(processes.free_port()),
            *extra_args,
        ],
        log,
        env=env,
    )


def apply_pool(
    api: client.ApiClient, namespace: str, manifest: dict[str, Any], profile: str = "cpu-tiny.json"
) -> None:
    """Create (or replace the spec of) a pool, with the profile ConfigMap it names."""
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    profile_map = (manifest["spec"].get("scaling") or {}).get("profileConfigMap")
    if profile_map:
        body = {
            "metadata": {"name": profile_map},
            "data": {"profile.json": (PROFILES / profile).read_text()},
        }
        _create(core.create_namespaced_config_map, namespace, body)
    name = manifest["metadata"]["name"]
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    except client.ApiException as error:
        if error.status != 409:
            raise
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": manifest["spec"]}
        )


def load_manifest(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def pool_snapshot(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api)
    apps = client.AppsV1Api(api)
    pool = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    try:
        deployment = apps.read_namespaced_deployment(f"{name}-worker", namespace)
        desired = deployment.spec.replicas or 0
        ready = deployment.status.ready_replicas or 0
    except client.ApiException:
        desired = ready = 0
    status = pool.get("status") or {}
    return {
        "desired": desired,
        "ready": ready,
        "endpoints": {e["name"]: e for e in status.get("endpoints") or []},
        "conditions": {c["type"]: c for c in status.get("conditions") or []},
        "last_decision": status.get("lastDecision") or {},
    }


def pool_events(api: client.ApiClient, namespace: str, name: str) -> list[dict[str, Any]]:
    """The operator's Events about the pool, oldest first."""
    events = (
        client.CoreV1Api(api)
        .list_namespaced_event(
            namespace,
            field_selector=f"involvedObject.kind=InferencePool,involvedObject.name={name}",
        )
        .items
    )
    rows = [
        {"reason": e.reason, "message": e.message, "time": (e.last_timestamp or e.event_time)}
        for e in events
    ]
    return sorted(rows, key=lambda r: str(r["time"]))


def dumps(document: Any) -> str:
    return json.dumps(document, indent=2, default=str)
