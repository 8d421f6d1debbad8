"""The owned objects built from a pool: what the worker, Prometheus and the GC rely on."""

from __future__ import annotations

import base64
import json

from carpool_operator import builders, names


def _container(pool):
    return builders.build_deployment(pool)["spec"]["template"]["spec"]["containers"][0]


def test_every_owned_object_has_the_pool_as_its_controller_owner(pool):
    objects = [
        builders.build_deployment(pool),
        builders.build_service(pool),
        builders.build_pdb(pool),
        builders.build_admin_secret(pool, "t"),
        builders.build_limits_configmap(pool, {"version": 1}),
    ]
    for obj in objects:
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {
            "apiVersion": "carpool.dev/v1alpha1",
            "kind": "InferencePool",
            "name": "assistant",
            "uid": "u-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }, obj["kind"]
        assert obj["metadata"]["namespace"] == "team-a"
        assert obj["metadata"]["labels"][names.LABEL_MANAGED_BY] == names.MANAGED_BY


def test_worker_command_line_follows_the_worker_contract(pool):
    pool["spec"]["worker"]["extraArgs"] = ["--device", "cuda"]
    container = _container(pool)
    assert container["command"] == ["carpool", "worker"]
    assert container["args"] == [
        "--model", "tiny",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--max-batch-size", "64",
        "--max-context", "2048",
        "--limits", "/etc/carpool/limits/limits.json",
        "--admin-token-file", "/etc/carpool/admin/token",
        "--device", "cuda",
    ]  # fmt: skip


def test_worker_listens_on_every_interface_of_the_pod_for_port_forwarding(pool):
    args = _container(pool)["args"]
    assert args[args.index("--host") + 1] == "0.0.0.0"


def test_worker_size_comes_from_the_spec(pool):
    pool["spec"]["worker"].update(kvCacheSlots=128, maxContextTokens=4096)
    args = _container(pool)["args"]
    assert args[args.index("--max-batch-size") + 1] == "128"
    assert args[args.index("--max-context") + 1] == "4096"


def test_pod_ip_comes_from_the_downward_api(pool):
    env = {e["name"]: e for e in _container(pool)["env"]}
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_user_env_follows_the_operators_own(pool):
    pool["spec"]["worker"]["env"] = [{"name": "LOG_LEVEL", "value": "debug"}]
    assert [e["name"] for e in _container(pool)["env"]] == ["POD_IP", "HOME", "LOG_LEVEL"]


def test_port_is_named_http_and_probes_use_it(pool):
    pool["spec"]["worker"]["port"] = 9000
    container = _container(pool)
    assert container["ports"] == [{"name": "http", "containerPort": 9000, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "--port" in container["args"] and "9000" in container["args"]


def test_gpu_resources_come_from_the_spec(pool):
    assert _container(pool)["resources"] == {"limits": {"nvidia.com/gpu": 1}}


def test_limits_configmap_and_admin_secret_are_mounted_read_only(pool):
    deployment = builders.build_deployment(pool)
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["limits"]["configMap"] == {"name": "assistant-limits"}
    assert volumes["admin"]["secret"]["secretName"] == "assistant-admin"
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/etc/carpool/limits"]["readOnly"] is True
    assert mounts["/etc/carpool/admin"]["readOnly"] is True


def test_security_context_is_restrictive(pool):
    pod = builders.build_deployment(pool)["spec"]["template"]["spec"]
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False


def test_pods_carry_the_labels_and_scrape_annotations_prometheus_discovers(pool):
    template = builders.build_deployment(pool)["spec"]["template"]["metadata"]
    assert template["labels"] == {
        "app.kubernetes.io/name": "carpool-worker",
        "app.kubernetes.io/instance": "assistant",
        "carpool.dev/pool": "assistant",
    }
    assert template["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics",
    }


def test_deployment_leaves_replicas_to_the_scaler_field_manager(pool):
    assert "replicas" not in builders.build_deployment(pool)["spec"]
    assert builders.build_replicas(pool, 3)["spec"] == {"replicas": 3}


def test_selectors_of_deployment_service_and_pdb_match_the_pod_labels(pool):
    labels = builders.build_deployment(pool)["spec"]["template"]["metadata"]["labels"]
    selectors = [
        builders.build_deployment(pool)["spec"]["selector"]["matchLabels"],
        builders.build_service(pool)["spec"]["selector"],
        builders.build_pdb(pool)["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector.items() <= labels.items()


def test_model_path_with_volume_is_mounted_read_only_at_the_path(pool):
    pool["spec"]["model"] = {
        "path": "/models/llama",
        "volume": {"persistentVolumeClaim": {"claimName": "llama", "readOnly": True}},
    }
    deployment = builders.build_deployment(pool)
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "llama", "readOnly": True}} in (
        pod["volumes"]
    )
    mount = {"name": "model", "mountPath": "/models/llama", "readOnly": True}
    assert mount in pod["containers"][0]["volumeMounts"]
    assert pod["containers"][0]["args"][1] == "/models/llama"


def test_node_selector_tolerations_and_pull_secrets_reach_the_pod(pool):
    worker = pool["spec"]["worker"]
    worker["nodeSelector"] = {"gpu": "h100"}
    worker["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    worker["imagePullSecrets"] = [{"name": "registry"}]
    pod = builders.build_deployment(pool)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert pod["imagePullSecrets"] == [{"name": "registry"}]


def test_service_exposes_the_worker_port_by_name(pool):
    (port,) = builders.build_service(pool)["spec"]["ports"]
    assert port == {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}


def test_admin_secret_without_a_token_carries_no_data(pool):
    assert "data" not in builders.build_admin_secret(pool, None)
    data = builders.build_admin_secret(pool, "s3cret")["data"]
    assert base64.b64decode(data["token"]).decode() == "s3cret"


def test_limits_configmap_holds_the_document_as_json(pool):
    document = {"version": 2, "defaultEndpoint": "a", "endpoints": {}}
    configmap = builders.build_limits_configmap(pool, document)
    assert json.loads(configmap["data"]["limits.json"]) == document


def test_the_same_pool_builds_the_same_objects(pool):
    assert builders.build_deployment(pool) == builders.build_deployment(pool)
    assert builders.build_limits_configmap(pool, {"version": 1, "b": 1, "a": 2}) == (
        builders.build_limits_configmap(pool, {"a": 2, "version": 1, "b": 1})
    )


def test_an_emulated_gpu_pool_mounts_its_profile_and_runs_the_worker_with_emulate(pool):
    pool["spec"]["model"] = {"preset": "bench-8b", "emulatedGPU": True}
    pool["spec"].setdefault("scaling", {})["profileConfigMap"] = "h200-8b"
    template = builders.build_pod_template(pool)
    container = template["spec"]["containers"][0]
    assert container["args"][2:4] == ["--emulate", "/etc/carpool/profile/profile.json"]
    assert {"name": "profile", "configMap": {"name": "h200-8b"}} in template["spec"]["volumes"]
    assert {"name": "profile", "mountPath": "/etc/carpool/profile", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert template["metadata"]["labels"]["carpool.dev/emulated-gpu"] == "true"


def test_a_model_pool_runs_no_emulated_gpu(pool):
    template = builders.build_pod_template(pool)
    assert "--emulate" not in template["spec"]["containers"][0]["args"]
    assert "carpool.dev/emulated-gpu" not in template["metadata"]["labels"]
