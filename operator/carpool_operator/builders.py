"""Pure builders of the objects a pool owns, as plain dicts ready for server-side apply.

Contract: every `build_*(pool, ...)` takes the InferencePool as the API server returns it (spec
with the CRD's defaults filled in, metadata with name, namespace and uid) and returns the full
desired object: apiVersion, kind, metadata (name, namespace, labels, the pool as controller
owner) and the fields the operator manages, nothing else. The same input always gives the same
output, so applying it again is a no-op; the Deployment leaves `spec.replicas` out (the worker
count has its own field manager, see `build_replicas`). No I/O, no clock, no randomness.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from carpool_operator import limits, names

Pool = Mapping[str, Any]


def owner_reference(pool: Pool) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "name": pool["metadata"]["name"],
        "uid": pool["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(pool: Pool, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": pool["metadata"]["namespace"],
        "labels": names.object_labels(pool["metadata"]["name"], component),
        "ownerReferences": [owner_reference(pool)],
    }


def _port(pool: Pool) -> int:
    return int(pool["spec"]["worker"].get("port", 8000))


def _model_arg(model: Mapping[str, Any]) -> str:
    return model["preset"] if "preset" in model else model["path"]


def emulated_gpu(pool: Pool) -> bool:
    """Whether the workers serve through an emulated GPU timed by the pool's profile."""
    return bool(pool["spec"]["model"].get("emulatedGPU"))


# The worker's size when the spec predates these fields (the CRD defaults them).
DEFAULT_KV_CACHE_SLOTS = 64
DEFAULT_MAX_CONTEXT_TOKENS = 2048


def build_container(pool: Pool) -> dict[str, Any]:
    spec = pool["spec"]
    worker = spec["worker"]
    port = _port(pool)
    emulate = (
        ["--emulate", f"{names.PROFILE_DIR}/{names.PROFILE_KEY}"] if emulated_gpu(pool) else []
    )
    # All interfaces of the pod: its IP for the Service and Prometheus, and loopback for
    # `kubectl port-forward`.
    args = [
        "--model", _model_arg(spec["model"]),
        *emulate,
        "--host", "0.0.0.0",
        "--port", str(port),
        "--max-batch-size", str(worker.get("kvCacheSlots", DEFAULT_KV_CACHE_SLOTS)),
        "--max-context", str(worker.get("maxContextTokens", DEFAULT_MAX_CONTEXT_TOKENS)),
        "--limits", f"{names.LIMITS_DIR}/{names.LIMITS_KEY}",
        "--admin-token-file", f"{names.ADMIN_DIR}/{names.ADMIN_TOKEN_KEY}",
        *worker.get("extraArgs", []),
    ]  # fmt: skip
    env = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOME", "value": "/tmp"},
        *[dict(item) for item in worker.get("env", []) if item.get("name") != "HOME"],
    ]
    mounts = [
        {"name": "limits", "mountPath": names.LIMITS_DIR, "readOnly": True},
        {"name": "admin", "mountPath": names.ADMIN_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if "volume" in spec["model"]:
        mounts.append({"name": "model", "mountPath": spec["model"]["path"], "readOnly": True})
    if emulated_gpu(pool):
        mounts.append({"name": "profile", "mountPath": names.PROFILE_DIR, "readOnly": True})

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "http"},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    container: dict[str, Any] = {
        "name": "worker",
        "image": worker["image"],
        "command": ["carpool", "worker"],
        "args": args,
        "env": env,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "readinessProbe": probe("/readyz", 5, 3),
        "livenessProbe": probe("/healthz", 10, 6),
        # Loading and warming a model can take minutes; liveness starts only after this passes.
        "startupProbe": probe("/healthz", 5, 120),
        "resources": dict(worker.get("resources") or {}),
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if "imagePullPolicy" in worker:
        container["imagePullPolicy"] = worker["imagePullPolicy"]
    return container


def build_pod_template(pool: Pool) -> dict[str, Any]:
    spec = pool["spec"]
    name = pool["metadata"]["name"]
    worker = spec["worker"]
    volumes: list[dict[str, Any]] = [
        {"name": "limits", "configMap": {"name": names.limits_configmap_name(name)}},
        {
            "name": "admin",
            "secret": {"secretName": names.admin_secret_name(name), "defaultMode": 0o440},
        },
        {"name": "tmp", "emptyDir": {}},
    ]
    if "volume" in spec["model"]:
        volumes.append({"name": "model", **dict(spec["model"]["volume"])})
    if emulated_gpu(pool):
        profile_map = spec["scaling"]["profileConfigMap"]
        volumes.append({"name": "profile", "configMap": {"name": profile_map}})
    pod_spec: dict[str, Any] = {
        "containers": [build_container(pool)],
        "volumes": volumes,
        # Workers never call the Kubernetes API.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "fsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if worker.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(worker["nodeSelector"])
    if worker.get("tolerations"):
        pod_spec["tolerations"] = [dict(t) for t in worker["tolerations"]]
    if worker.get("imagePullSecrets"):
        pod_spec["imagePullSecrets"] = [dict(s) for s in worker["imagePullSecrets"]]
    labels = {**names.selector_labels(name), names.LABEL_INSTANCE: name}
    if emulated_gpu(pool):  # say so wherever an emulated worker appears
        labels[names.LABEL_EMULATED_GPU] = "true"
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(_port(pool)),
        "prometheus.io/path": "/metrics",
    }
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}


def build_deployment(pool: Pool) -> dict[str, Any]:
    name = pool["metadata"]["name"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(pool, names.deployment_name(name), "worker"),
        "spec": {
            "selector": {"matchLabels": names.selector_labels(name)},
            # Never below the current capacity during a rollout (one extra GPU is needed).
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 5,
            "template": build_pod_template(pool),
        },
    }


def build_replicas(pool: Pool, replicas: int) -> dict[str, Any]:
    """The worker count alone, applied with `names.SCALER_FIELD_MANAGER`."""
    name = pool["metadata"]["name"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": names.deployment_name(name),
            "namespace": pool["metadata"]["namespace"],
        },
        "spec": {"replicas": int(replicas)},
    }


def build_service(pool: Pool) -> dict[str, Any]:
    name = pool["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(pool, names.service_name(name), "service"),
        "spec": {
            "type": "ClusterIP",
            "selector": names.selector_labels(name),
            "ports": [
                {"name": "http", "port": _port(pool), "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def build_limits_configmap(pool: Pool, document: Mapping[str, Any]) -> dict[str, Any]:
    name = pool["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(pool, names.limits_configmap_name(name), "limits"),
        "data": {names.LIMITS_KEY: limits.render(document)},
    }


def build_admin_secret(pool: Pool, token: str | None) -> dict[str, Any]:
    """The admin-token Secret; with `token=None` only its metadata (the token is never re-applied
    once created)."""
    name = pool["metadata"]["name"]
    secret: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(pool, names.admin_secret_name(name), "admin-token"),
        "type": "Opaque",
    }
    if token is not None:
        secret["data"] = {names.ADMIN_TOKEN_KEY: base64.b64encode(token.encode()).decode()}
    return secret


def build_pdb(pool: Pool) -> dict[str, Any]:
    name = pool["metadata"]["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(pool, names.pdb_name(name), "worker"),
        "spec": {
            "selector": {"matchLabels": names.selector_labels(name)},
            # Drains evict one worker at a time; a single-worker pool can still be drained.
            "maxUnavailable": 1,
        },
    }
