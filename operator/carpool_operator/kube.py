"""The only module of the operator that talks to the Kubernetes API.

Contract: a `Kube` wraps one `kubernetes.client.ApiClient` and speaks plain dicts, exactly as
the API server sends them (camelCase), for the kinds named in `KINDS` and `CUSTOM`:
- `get` returns None for a missing object; `list` returns [] for a kind the cluster does not
  serve (a CRD that is not installed, such as KEDA's ScaledObject).
- `apply` is server-side apply with a field manager (forced by default: the operator re-takes
  fields someone else changed); `create` fails with 409 if the object exists.
- `update_pool_status(namespace, name, mutate)` reads the pool, calls `mutate(pool)` for the new
  status and writes it with the read resourceVersion as a precondition, retrying on conflicts;
  a mutate that returns None or the same status writes nothing.
- `post_event` records a core/v1 Event about a pool.
Errors other than "not found" are raised as `kubernetes.client.ApiException`.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client import ApiException

from carpool_operator import names

# kind -> (typed API class, method suffix)
KINDS: dict[str, tuple[str, str]] = {
    "Deployment": ("AppsV1Api", "deployment"),
    "Service": ("CoreV1Api", "service"),
    "ConfigMap": ("CoreV1Api", "config_map"),
    "Secret": ("CoreV1Api", "secret"),
    "Pod": ("CoreV1Api", "pod"),
    "Event": ("CoreV1Api", "event"),
    "PodDisruptionBudget": ("PolicyV1Api", "pod_disruption_budget"),
    "HorizontalPodAutoscaler": ("AutoscalingV2Api", "horizontal_pod_autoscaler"),
}
# kind -> (group, version, plural, namespaced)
CUSTOM: dict[str, tuple[str, str, str, bool]] = {
    "InferencePool": (names.GROUP, names.VERSION, names.PLURAL, True),
    "ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects", True),
    "KopfPeering": ("kopf.dev", "v1", "kopfpeerings", True),
    "ClusterKopfPeering": ("kopf.dev", "v1", "clusterkopfpeerings", False),
}

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


def load_api_client() -> kubernetes.client.ApiClient:
    """In-cluster credentials when running in a pod, else $KUBECONFIG or ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


def _data(response: Any) -> Any:
    raw = response.data
    return json.loads(raw) if raw else None


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    def __init__(self, api_client: kubernetes.client.ApiClient, instance: str | None = None):
        self.api_client = api_client
        self.instance = instance or os.environ.get("POD_NAME") or socket.gethostname()
        self._custom = kubernetes.client.CustomObjectsApi(api_client)

    def _typed(self, kind: str, verb: str) -> Callable[..., Any]:
        api_class, suffix = KINDS[kind]
        api = getattr(kubernetes.client, api_class)(self.api_client)
        return getattr(api, f"{verb}_namespaced_{suffix}")

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            if kind in CUSTOM:
                group, version, plural, namespaced = CUSTOM[kind]
                if namespaced:
                    response = self._custom.get_namespaced_custom_object(
                        group, version, namespace, plural, name, _preload_content=False
                    )
                else:
                    response = self._custom.get_cluster_custom_object(
                        group, version, plural, name, _preload_content=False
                    )
            else:
                response = self._typed(kind, "read")(name, namespace, _preload_content=False)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return _data(response)

    def list(
        self, kind: str, namespace: str, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        extra = {"label_selector": label_selector} if label_selector else {}
        try:
            if kind in CUSTOM:
                group, version, plural, _ = CUSTOM[kind]
                response = self._custom.list_namespaced_custom_object(
                    group, version, namespace, plural, _preload_content=False, **extra
                )
            else:
                response = self._typed(kind, "list")(namespace, _preload_content=False, **extra)
        except ApiException as error:
            if error.status == 404:  # the kind is not served here (e.g. KEDA not installed)
                return []
            raise
        return (_data(response) or {}).get("items") or []

    def apply(
        self, obj: dict[str, Any], manager: str = names.FIELD_MANAGER, force: bool = True
    ) -> dict[str, Any]:
        meta = obj["metadata"]
        options = {
            "field_manager": manager,
            "force": force,
            "_content_type": APPLY,
            "_preload_content": False,
        }
        if obj["kind"] in CUSTOM:
            group, version, plural, _ = CUSTOM[obj["kind"]]
            response = self._custom.patch_namespaced_custom_object(
                group, version, meta["namespace"], plural, meta["name"], obj, **options
            )
        else:
            patch = self._typed(obj["kind"], "patch")
            response = patch(meta["name"], meta["namespace"], obj, **options)
        return _data(response)

    def create(self, obj: dict[str, Any], manager: str = names.FIELD_MANAGER) -> dict[str, Any]:
        kind, meta = obj["kind"], obj["metadata"]
        if kind in CUSTOM:
            group, version, plural, namespaced = CUSTOM[kind]
            if namespaced:
                response = self._custom.create_namespaced_custom_object(
                    group, version, meta["namespace"], plural, obj, _preload_content=False
                )
            else:
                response = self._custom.create_cluster_custom_object(
                    group, version, plural, obj, _preload_content=False
                )
        else:
            create = self._typed(kind, "create")
            response = create(meta["namespace"], obj, field_manager=manager, _preload_content=False)
        return _data(response)

    def merge_patch(
        self, kind: str, namespace: str, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        response = self._typed(kind, "patch")(
            name,
            namespace,
            patch,
            field_manager=names.FIELD_MANAGER,
            _content_type=MERGE,
            _preload_content=False,
        )
        return _data(response)

    def update_pool_status(
        self,
        namespace: str,
        name: str,
        mutate: Callable[[dict[str, Any]], dict[str, Any] | None],
        attempts: int = 8,
    ) -> dict[str, Any] | None:
        group, version, plural, _ = CUSTOM["InferencePool"]
        for attempt in range(attempts):
            pool = self.get("InferencePool", namespace, name)
            if pool is None:
                return None
            status = mutate(pool)
            if status is None or status == (pool.get("status") or {}):
                return pool
            body = {"metadata": {"resourceVersion": pool["metadata"]["resourceVersion"]}}
            body["status"] = status
            try:
                response = self._custom.patch_namespaced_custom_object_status(
                    group,
                    version,
                    namespace,
                    plural,
                    name,
                    body,
                    field_manager=names.FIELD_MANAGER,
                    _content_type=MERGE,
                    _preload_content=False,
                )
            except ApiException as error:
                if error.status == 409 and attempt + 1 < attempts:
                    continue
                if error.status == 404:
                    return None
                raise
            return _data(response)
        return None

    def post_event(
        self, pool: dict[str, Any], type_: str, reason: str, message: str, action: str = ""
    ) -> None:
        meta = pool["metadata"]
        now = now_rfc3339()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": names.API_VERSION,
                "kind": names.KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "action": action or reason,
            "source": {"component": names.MANAGED_BY},
            "reportingComponent": f"{names.GROUP}/operator",
            "reportingInstance": self.instance[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._typed("Event", "create")(meta["namespace"], event, _preload_content=False)

    def ensure_peering(self, name: str, namespace: str | None) -> bool:
        """Create kopf's peering object if it is missing; True if this call created it."""
        kind = "KopfPeering" if namespace else "ClusterKopfPeering"
        group, version, _, _ = CUSTOM[kind]
        metadata: dict[str, Any] = {"name": name}
        if namespace:
            metadata["namespace"] = namespace
        try:
            self.create({"apiVersion": f"{group}/{version}", "kind": kind, "metadata": metadata})
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return True
