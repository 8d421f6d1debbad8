"""Names, labels and field managers shared by the operator's modules.

Contract: pure constants and functions of a pool's name. The CRD limits pool names to DNS-1035
labels of at most 50 characters, so every name derived here is a valid Service, Deployment,
ConfigMap and Secret name and every label value is at most 63 characters.
"""

from __future__ import annotations

GROUP = "carpool.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "InferencePool"
PLURAL = "inferencepools"

# Server-side apply field managers: one for everything the operator derives from the spec, one
# for the worker count alone, so applying the spec never resets a count the control loop set.
FIELD_MANAGER = "carpool-operator"
SCALER_FIELD_MANAGER = "carpool-scaler"

MANAGED_BY = "carpool-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_POOL = "carpool.dev/pool"
LABEL_EMULATED_GPU = "carpool.dev/emulated-gpu"
WORKER_APP = "carpool-worker"

# Selects every object the operator owns, server-side (the operator's watches use it).
MANAGED_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"

LIMITS_KEY = "limits.json"
LIMITS_DIR = "/etc/carpool/limits"
ADMIN_TOKEN_KEY = "token"
ADMIN_DIR = "/etc/carpool/admin"
# Where an emulated-GPU worker reads the pool's profile (model.emulatedGPU).
PROFILE_DIR = "/etc/carpool/profile"
PROFILE_KEY = "profile.json"


def deployment_name(pool: str) -> str:
    return f"{pool}-worker"


def service_name(pool: str) -> str:
    return pool


def limits_configmap_name(pool: str) -> str:
    return f"{pool}-limits"


def admin_secret_name(pool: str) -> str:
    return f"{pool}-admin"


def pdb_name(pool: str) -> str:
    return f"{pool}-worker"


def selector_labels(pool: str) -> dict[str, str]:
    """The worker pods' selector (immutable once a Deployment exists: never change it)."""
    return {LABEL_NAME: WORKER_APP, LABEL_POOL: pool}


def selector_string(pool: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(pool).items()))


def object_labels(pool: str, component: str) -> dict[str, str]:
    return {
        LABEL_NAME: WORKER_APP,
        LABEL_INSTANCE: pool,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_POOL: pool,
    }


def pool_of(obj_metadata: dict) -> str | None:
    """The name of the InferencePool that owns an object, from its controller reference."""
    for ref in obj_metadata.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            return ref.get("name")
    return None
