"""The chart rendered without a cluster: what it ships, what each value switches, and that the
CRDs, the RBAC rules and the dashboard come from their single sources."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "carpool"
MONITORING = ("PrometheusRule", "PodMonitor", "ServiceMonitor")

Render = Callable[..., list[dict]]


def one(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    (found,) = [
        d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)
    ]
    return found


def api_versions(*kinds: str) -> list[str]:
    return [a for kind in kinds for a in ("--api-versions", f"monitoring.coreos.com/v1/{kind}")]


def test_chart_crds_are_byte_identical_to_the_crds_folder() -> None:
    shipped = {p.name: p.read_bytes() for p in (CHART / "crds").iterdir()}
    source = {p.name: p.read_bytes() for p in (ROOT / "crds").iterdir()}
    assert shipped == source


def test_helm_lint_passes_strict(helm: Path) -> None:
    result = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cluster_role_rules_are_the_operator_rules_file(rendered: Render) -> None:
    role = one(rendered(), "ClusterRole")
    source = yaml.safe_load((CHART / "files" / "operator-rbac.yaml").read_text())
    assert role["rules"] == source


def test_cluster_role_binding_grants_the_role_to_the_operator_account(rendered: Render) -> None:
    docs = rendered()
    binding = one(docs, "ClusterRoleBinding")
    account = one(docs, "ServiceAccount")
    assert binding["roleRef"]["name"] == one(docs, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "carpool"}
    ]


def test_operator_runs_two_replicas_that_share_one_peering(rendered: Render) -> None:
    docs = rendered()
    deployment = one(docs, "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    (peering, *_) = [d for d in docs if d["kind"] == "ClusterKopfPeering"]
    assert deployment["spec"]["replicas"] == 2
    assert f"--peering={peering['metadata']['name']}" in args
    assert "--standalone" not in args


def test_operator_runs_non_root_with_a_read_only_root_filesystem(rendered: Render) -> None:
    pod = one(rendered(), "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_operator_probes_and_scrape_annotations_use_its_ports(rendered: Render) -> None:
    docs = rendered("--set", "operator.metrics.port=9100", "--set", "operator.health.port=9101")
    template = one(docs, "Deployment")["spec"]["template"]
    container = template["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 9100, "health": 9101}
    assert {"--metrics-port=9100", "--health-port=9101"} <= set(container["args"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert template["metadata"]["annotations"]["prometheus.io/port"] == "9100"
    assert container["resources"]["requests"] and container["resources"]["limits"]


def test_watch_namespaces_become_flags_and_namespaced_peerings(rendered: Render) -> None:
    docs = rendered("--set", "operator.watchNamespaces={ml,tenant-*}")
    args = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    peerings = [
        (p["kind"], p["metadata"]["namespace"])
        for p in docs
        if p["kind"].endswith("KopfPeering")
        and p["metadata"]["annotations"]["helm.sh/hook"] == "pre-install"
    ]
    assert {"--namespace=ml", "--namespace=tenant-*"} <= set(args)
    assert peerings == [("KopfPeering", "ml")]


def test_peering_exists_before_the_operator_and_goes_on_uninstall(rendered: Render) -> None:
    hooks = {
        d["metadata"]["annotations"]["helm.sh/hook"]: d["metadata"]["annotations"]
        for d in rendered()
        if d["kind"] == "ClusterKopfPeering"
    }
    assert set(hooks) == {"pre-install", "pre-delete"}
    assert "hook-succeeded" not in hooks["pre-install"]["helm.sh/hook-delete-policy"]
    assert (
        hooks["pre-delete"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    )


def test_single_replica_has_no_disruption_budget(rendered: Render) -> None:
    docs = rendered("--set", "operator.replicaCount=1")
    assert [d for d in docs if d["kind"] == "PodDisruptionBudget"] == []


def test_default_install_renders_no_monitoring_objects(rendered: Render) -> None:
    kinds = {d["kind"] for d in rendered(*api_versions(*MONITORING))}
    assert kinds.isdisjoint(MONITORING)
    assert not [d for d in rendered() if d["kind"] == "ConfigMap"]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("prometheus.rules.enabled", "PrometheusRule"),
        ("prometheus.workers.podMonitor.enabled", "PodMonitor"),
        ("prometheus.operator.podMonitor.enabled", "PodMonitor"),
        ("prometheus.operator.serviceMonitor.enabled", "ServiceMonitor"),
    ],
)
def test_monitoring_object_on_a_cluster_without_its_crd_fails_with_a_reason(
    value: str, kind: str, template: Callable[..., subprocess.CompletedProcess]
) -> None:
    result = template("--set", f"{value}=true", check=False)
    assert result.returncode != 0
    assert f"monitoring.coreos.com/v1 {kind}" in result.stderr


def test_worker_pod_monitor_keeps_the_endpoint_label_and_adds_pool(rendered: Render) -> None:
    docs = rendered(
        "--set", "prometheus.workers.podMonitor.enabled=true", *api_versions("PodMonitor")
    )
    monitor = one(docs, "PodMonitor", "-workers")
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "carpool-worker"
    }
    assert endpoint["port"] == "http"
    assert endpoint["honorLabels"] is True
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_carpool_dev_pool"],
        "targetLabel": "pool",
    } in endpoint["relabelings"]


def test_dashboard_configmap_holds_the_dashboard_file_for_the_sidecar(rendered: Render) -> None:
    docs = rendered("--set", "grafana.dashboard.enabled=true")
    configmap = one(docs, "ConfigMap", "-dashboard")
    source = (CHART / "files" / "dashboards" / "carpool.json").read_text()
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["carpool.json"]) == json.loads(source)


def test_values_schema_refuses_a_wrong_value(
    template: Callable[..., subprocess.CompletedProcess],
) -> None:
    result = template("--set", "operator.logLevel=LOUD", check=False)
    assert result.returncode != 0
    assert "logLevel" in result.stderr


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_observability_doc_lists_every_dashboard_and_alert_expression(rules_file: Path) -> None:
    doc = _squash((ROOT / "docs" / "observability.md").read_text())
    dashboard = json.loads((CHART / "files" / "dashboards" / "carpool.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    groups = yaml.safe_load(rules_file.read_text())["groups"]
    exprs += [r["expr"] for g in groups for r in g["rules"]]
    assert [e for e in exprs if _squash(e) not in doc] == []


def _operator_container(docs: list[dict]) -> tuple[dict, dict]:
    pod = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def test_prometheus_credentials_are_mounted_files_the_operator_reads(rendered: Render) -> None:
    pod, container = _operator_container(
        rendered(
            "--set", "operator.prometheus.bearerTokenSecret.name=prom-token",
            "--set", "operator.prometheus.caBundle.configMap.name=prom-ca",
            "--set-json", 'operator.prometheus.headers={"X-Scope-OrgID":"team a"}',
        )
    )  # fmt: skip
    args = container["args"]
    assert "--prometheus-bearer-token-file=/etc/carpool/prometheus/token/token" in args
    assert "--prometheus-ca-file=/etc/carpool/prometheus/ca/ca.crt" in args
    assert "--prometheus-header=X-Scope-OrgID=team a" in args
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["prometheus-token"]["secret"]["secretName"] == "prom-token"
    assert volumes["prometheus-ca"]["configMap"]["name"] == "prom-ca"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["prometheus-token"] == {
        "name": "prometheus-token",
        "mountPath": "/etc/carpool/prometheus/token",
        "readOnly": True,
    }


def test_no_prometheus_credentials_mount_nothing(rendered: Render) -> None:
    pod, container = _operator_container(rendered())
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    assert not [a for a in container["args"] if a.startswith("--prometheus-") and "url" not in a]


def test_the_operator_rbac_needs_no_secret_read_for_prometheus_credentials() -> None:
    rules = yaml.safe_load((CHART / "files" / "operator-rbac.yaml").read_text())
    secret_verbs = {v for r in rules if "secrets" in r.get("resources", []) for v in r["verbs"]}
    assert secret_verbs <= {"get", "create", "patch"}  # the admin Secret only; no list or watch


def test_basic_auth_without_a_password_secret_is_refused(
    template: Callable[..., subprocess.CompletedProcess],
) -> None:
    result = template("--set", "operator.prometheus.basicAuth.username=carpool", check=False)
    assert result.returncode != 0
    assert "basicAuth.passwordSecret.name" in result.stderr


def test_a_header_name_with_a_colon_is_refused_by_the_values_schema(
    template: Callable[..., subprocess.CompletedProcess],
) -> None:
    result = template("--set-json", 'operator.prometheus.headers={"X-Org:":"a"}', check=False)
    assert result.returncode != 0
    assert "X-Org:" in result.stderr


def test_the_gpu_hour_price_reaches_the_operator(rendered: Render) -> None:
    _, container = _operator_container(rendered("--set", "operator.gpuHourPrice=2.49"))
    assert "--gpu-hour-price=2.49" in container["args"]
