"""The local control plane is a real one: each component does its job, RBAC is enforced."""

from __future__ import annotations

import re
import uuid

import pytest
from kubernetes import client, config

from carpool_cluster.kubelet import node_body
from carpool_cluster.testing import wait_for

PAUSE_POD = {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10"}]}


def gpu_deployment(name: str, replicas: int, node_label: str) -> dict:
    pod_spec = {
        "nodeSelector": {"carpool.dev/test-node": node_label},
        "containers": [
            {
                "name": "main",
                "image": "registry.k8s.io/pause:3.10",
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
            }
        ],
    }
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def pods_of(api: client.ApiClient, namespace: str, app: str) -> list[client.V1Pod]:
    return client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=f"app={app}").items


@pytest.fixture
def test_node(api: client.ApiClient):
    """A Ready two-GPU Node that only this test's pods select."""
    label = uuid.uuid4().hex[:8]
    name = f"test-gpu-{label}"
    body = node_body(name, gpus=2)
    body["metadata"]["labels"]["carpool.dev/test-node"] = label
    yield name, label, body
    try:
        client.CoreV1Api(api).delete_node(name)
    except client.ApiException as error:
        if error.status != 404:
            raise


# The oldest Kubernetes the e2e suite is written for (the CRD's CEL rules are GA there).
MINIMUM_KUBERNETES = (1, 30)


def minor_version(version: client.VersionInfo) -> tuple[int, int]:
    # Managed clusters write the minor as "30+" (GKE, EKS): the digits are what count.
    return int(version.major), int(re.match(r"\d+", version.minor).group())


def test_apiserver_is_a_supported_kubernetes(api: client.ApiClient) -> None:
    version = client.VersionApi(api).get_code()
    # Reported, not asserted: the local control plane pins one version, and a KUBECONFIG cluster
    # brings its own.
    print(f"kube-apiserver version: {version.git_version} ({version.platform})")
    assert minor_version(version) >= MINIMUM_KUBERNETES, (
        f"Kubernetes {version.git_version} is older than the supported "
        f"{'.'.join(map(str, MINIMUM_KUBERNETES))}"
    )


def test_deployment_gets_replicaset_and_pods_that_stay_pending_without_a_node(
    api: client.ApiClient, namespace: str, test_node
) -> None:
    _, label, _ = test_node
    client.AppsV1Api(api).create_namespaced_deployment(namespace, gpu_deployment("w", 3, label))

    replica_sets = wait_for(
        "the controller-manager to create a ReplicaSet",
        lambda: client.AppsV1Api(api).list_namespaced_replica_set(namespace).items,
    )
    assert replica_sets[0].metadata.owner_references[0].name == "w"
    pods = wait_for("three pods", lambda: (p := pods_of(api, namespace, "w")) and len(p) == 3 and p)
    unschedulable = wait_for(
        "the scheduler to report every pod Unschedulable",
        lambda: all(
            any(
                c.type == "PodScheduled" and c.reason == "Unschedulable"
                for c in (p.status.conditions or [])
            )
            for p in pods_of(api, namespace, "w")
        ),
    )
    assert unschedulable
    assert all(p.spec.node_name is None for p in pods_of(api, namespace, "w"))
    assert len(pods) == 3


def test_scheduler_binds_only_as_many_one_gpu_pods_as_the_node_has_gpus(
    api: client.ApiClient, namespace: str, test_node
) -> None:
    name, label, body = test_node
    client.AppsV1Api(api).create_namespaced_deployment(namespace, gpu_deployment("w", 3, label))
    wait_for("three pods", lambda: len(pods_of(api, namespace, "w")) == 3)

    client.CoreV1Api(api).create_node(body)

    bound = wait_for(
        "two pods bound to the two-GPU node",
        lambda: (
            len(b := [p for p in pods_of(api, namespace, "w") if p.spec.node_name == name]) == 2
            and b
        ),
        timeout_seconds=90,
    )
    assert len(bound) == 2
    # Give the scheduler more passes: the third pod must stay unbound, not squeeze in.
    wait_for(
        "another scheduling attempt on the remaining pod",
        lambda: any(
            c.type == "PodScheduled"
            and c.status == "False"
            and "nvidia.com/gpu" in (c.message or "")
            for p in pods_of(api, namespace, "w")
            if p.spec.node_name is None
            for c in (p.status.conditions or [])
        ),
    )
    assert sum(p.spec.node_name is None for p in pods_of(api, namespace, "w")) == 1


def test_deleting_a_deployment_garbage_collects_its_replicaset_and_pods(
    api: client.ApiClient, namespace: str
) -> None:
    apps = client.AppsV1Api(api)
    apps.create_namespaced_deployment(namespace, gpu_deployment("gone", 2, "nowhere"))
    wait_for("pods", lambda: len(pods_of(api, namespace, "gone")) == 2)

    apps.delete_namespaced_deployment("gone", namespace, propagation_policy="Background")

    wait_for(
        "the ReplicaSet to be collected",
        lambda: not apps.list_namespaced_replica_set(namespace).items,
    )
    wait_for("the pods to be collected", lambda: not pods_of(api, namespace, "gone"))


def test_service_account_is_refused_what_its_role_does_not_allow(
    api: client.ApiClient, namespace: str, identity_kubeconfig
) -> None:
    kubeconfig = identity_kubeconfig(
        account="reader",
        account_namespace=namespace,
        role_namespace=namespace,
        rules=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
    )
    narrow = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))

    assert narrow.list_namespaced_config_map(namespace).items is not None
    with pytest.raises(client.ApiException) as refused:
        narrow.create_namespaced_config_map(namespace, {"metadata": {"name": "x"}})
    assert refused.value.status == 403
    with pytest.raises(client.ApiException) as refused_secrets:
        narrow.list_namespaced_secret(namespace)
    assert refused_secrets.value.status == 403
    with pytest.raises(client.ApiException) as other_namespace:
        narrow.list_namespaced_config_map("default")
    assert other_namespace.value.status == 403
