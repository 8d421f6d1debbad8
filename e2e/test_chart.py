"""The chart's lifecycle on a real cluster, and its PromQL against a real Prometheus.

One release serves the whole module, in this order: a server-side dry run of the rendered
chart (its own release name), ``helm install`` with the operator pods running and reconciling an
example pool whose workers take real requests, every dashboard and alert expression evaluated
by Prometheus over those workers and the operator, ``helm upgrade`` with changed values, and
``helm uninstall``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client

from carpool_cluster import binaries, testing
from carpool_cluster.testing import wait_for
from carpool_operator.control_metrics import DECISION_REASONS

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "carpool"
RELEASE = "carpool-e2e"
OPERATOR = f"{RELEASE}-operator"  # the chart's full name holds "carpool" already
POOL = "assistant"
ENDPOINTS = ("inline-completion", "nightly-labeling")

# Labelled counters that appear only after their first event, which a healthy, settled install
# need not have had: errors, and objects applied (counted from the process's start, so a replica
# that became active after the pool's objects existed has applied none).
ONLY_AFTER_EVENTS = {
    'carpool_operator_reconciles_total{outcome="error"}',
    "carpool_operator_api_errors_total",
    "carpool_operator_objects_applied_total",
    "carpool_control_errors_total",
    # Series of a misconfiguration, which a healthy pool does not have (e2e/test_misconfiguration.py
    # checks them): the reason metrics are unavailable, and a profile ConfigMap's state.
    "carpool_pool_metrics_unavailable_reason",
    "carpool_pool_profile_loaded",
}
GPU_HOUR_PRICE = "2.5"


def example_pool() -> dict:
    return {
        "apiVersion": "carpool.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": POOL},
        "spec": {
            "model": {"preset": "tiny"},
            "worker": {
                "image": "ghcr.io/carpool-dev/carpool:0.1.0",
                "resources": {"limits": {"nvidia.com/gpu": 1}},
            },
            "replicas": {"min": 1, "max": 2},
            "endpoints": [
                {
                    "name": ENDPOINTS[0],
                    "priority": 100,
                    "default": True,
                    # Both kinds of SLA, so that both kinds of burn-rate alert have series.
                    "sla": {"ttftP95Milliseconds": 2000, "queueWaitP95Milliseconds": 1000},
                    "batching": {"maxBatchSize": {"min": 1, "max": 8}},
                },
                {
                    "name": ENDPOINTS[1],
                    "priority": 0,
                    "batching": {"maxBatchSize": {"min": 4, "max": 16}},
                },
            ],
        },
    }


# -- expressions ---------------------------------------------------------------------------


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads((CHART / "files" / "dashboards" / "carpool.json").read_text())
    found = []
    for variable in dashboard["templating"]["list"]:
        query = (variable.get("query") or {}) if variable["type"] == "query" else {}
        if query:
            # label_values(SELECTOR, label): Grafana's; the selector is PromQL.
            selector = query["query"].removeprefix("label_values(").rsplit(",", 1)[0]
            found.append((f"variable {variable['name']}", selector))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']} {target['refId']}", target["expr"]))
    return found


def alert_expressions() -> list[tuple[str, str]]:
    rendered = subprocess.run(
        [
            str(binaries.expected().helm),
            "template",
            RELEASE,
            str(CHART),
            "--set",
            "prometheus.rules.enabled=true",
            "--api-versions",
            "monitoring.coreos.com/v1/PrometheusRule",
            "--show-only",
            "templates/monitoring/prometheusrule.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    groups = yaml.safe_load(rendered)["spec"]["groups"]
    return [(f"alert {r['alert']}", r["expr"]) for g in groups for r in g["rules"]]


def grafana_variables(expr: str, namespace: str) -> str:
    for name, value in (
        ("$__rate_interval", "5m"),
        ("$__range", "5m"),
        ("$gpus_per_worker", "1"),
        ("$namespace", namespace),
        ("$pool", POOL),
        ("$endpoint", ".+"),
    ):
        expr = expr.replace(name, value)
    return expr


# -- helpers -------------------------------------------------------------------------------


def run(*argv: str | Path, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(
        [str(a) for a in argv], input=stdin, capture_output=True, text=True, timeout=300
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv[:3]))} failed:\n{result.stderr}")
    return result.stdout


def helm(cluster: testing.TestCluster, *args: str, check: bool = True) -> str:
    return run(cluster.helm, "--kubeconfig", cluster.kubeconfig, *args, check=check)


def prom(url: str, path: str, query: str) -> dict:
    body = httpx.post(f"{url}/api/v1/{path}", data={"query": query}, timeout=10).json()
    assert body["status"] == "success", f"{query}\n{body.get('error')}"
    return body["data"]


def selectors(tree) -> list[str]:
    """Every series selector of a parsed expression, as PromQL."""
    if isinstance(tree, list):
        return [s for item in tree for s in selectors(item)]
    if not isinstance(tree, dict):
        return []
    if "matchers" in tree:
        name = tree["name"]
        matchers = [
            f"{m['name']}{m['type']}{json.dumps(m['value'])}"
            for m in tree["matchers"]
            if m["name"] != "__name__"
        ]
        return [f"{name}{{{', '.join(matchers)}}}" if matchers else name]
    return [s for value in tree.values() for s in selectors(value)]


def ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crds(cluster: testing.TestCluster) -> None:
    """The chart's CRDs, applied as docs/install.md says (Helm skips existing ones)."""
    run(
        cluster.kubectl,
        "--kubeconfig",
        cluster.kubeconfig,
        "apply",
        "--server-side",
        "-f",
        CHART / "crds",
    )


@pytest.fixture(scope="module")
def release_namespace(api: client.ApiClient):
    name = testing.create_namespace(api, prefix="carpool")
    yield name
    client.CoreV1Api(api).delete_namespace(name)


@pytest.fixture(scope="module")
def installed(cluster, api, gpu_nodes, prometheus_url, crds, release_namespace):
    helm(
        cluster,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        release_namespace,
        "--set",
        f"operator.prometheusUrl={prometheus_url}",
        "--set",
        "operator.peering.lifetimeSeconds=20",
        "--set-string",
        f"operator.gpuHourPrice={GPU_HOUR_PRICE}",
        "--wait",
        "--timeout",
        "180s",
    )
    yield release_namespace
    helm(cluster, "uninstall", RELEASE, "--namespace", release_namespace, check=False)


@pytest.fixture(scope="module")
def pool(api: client.ApiClient, installed: str, prometheus_url: str):
    """The example pool, reconciled by the installed operator, its workers having served
    requests on both endpoints."""
    namespace = testing.create_namespace(api, prefix="pool")
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    custom.create_namespaced_custom_object(
        "carpool.dev", "v1alpha1", namespace, "inferencepools", example_pool()
    )

    def ready_workers() -> list[client.V1Pod]:
        pods = core.list_namespaced_pod(namespace, label_selector=f"carpool.dev/pool={POOL}")
        return [p for p in pods.items if ready(p)]

    workers = wait_for("a ready worker pod of the example pool", ready_workers, 300, 1)
    # Prometheus must hold a sample of each worker's counters from before the requests: a
    # counter first scraped after them shows no increase, so rate() (the fuel ledger's) is 0.
    wait_for(
        "each worker scraped before any request",
        lambda: (
            len(
                prom(
                    prometheus_url,
                    "query",
                    f'carpool_prompt_tokens_total{{namespace="{namespace}"}}',
                )["result"]
            )
            >= len(workers) * len(ENDPOINTS)
        ),
        120,
        1,
    )
    for pod in workers:
        for endpoint in ENDPOINTS:
            for _ in range(4):
                response = httpx.post(
                    f"http://{pod.status.pod_ip}:8000/v1/completions",
                    headers={"X-Carpool-Endpoint": endpoint},
                    json={"prompt": "the carpool lane", "max_tokens": 4},
                    timeout=60,
                )
                assert response.status_code == 200, response.text
    # Give the control loop a few intervals to export its per-pool series (if it runs at all).
    with contextlib.suppress(AssertionError):
        wait_for(
            "the control loop's series",
            lambda: prom(
                prometheus_url, "query", f'carpool_pool_replicas{{namespace="{namespace}"}}'
            )["result"],
            60,
            2,
        )
    yield namespace
    core.delete_namespace(namespace)


# -- tests ---------------------------------------------------------------------------------


def test_rendered_chart_passes_a_server_side_dry_run(cluster, api, crds) -> None:
    namespace = testing.create_namespace(api, prefix="dryrun")
    try:
        manifest = helm(cluster, "template", "dryrun", str(CHART), "--namespace", namespace)
        out = run(
            cluster.kubectl,
            "--kubeconfig",
            cluster.kubeconfig,
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            "-",
            stdin=manifest,
        )
    finally:
        client.CoreV1Api(api).delete_namespace(namespace)
    assert "deployment.apps/dryrun-carpool-operator serverside-applied (server dry run)" in out
    assert "clusterkopfpeering.kopf.dev/dryrun-carpool serverside-applied (server dry run)" in out


def test_install_runs_every_operator_replica_ready(api: client.ApiClient, installed: str) -> None:
    deployment = client.AppsV1Api(api).read_namespaced_deployment(OPERATOR, installed)
    assert deployment.status.ready_replicas == 2


def test_installed_operator_replicas_join_one_peering(api: client.ApiClient, installed: str):
    custom = client.CustomObjectsApi(api)

    def members() -> dict | None:
        peering = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", RELEASE)
        status = peering.get("status") or {}
        return status if len(status) == 2 else None

    assert len(wait_for("both replicas in the peering", members, 60, 1)) == 2


def test_installed_operator_reconciles_the_example_pool(api: client.ApiClient, pool: str) -> None:
    custom = client.CustomObjectsApi(api)
    body = custom.get_namespaced_custom_object(
        "carpool.dev", "v1alpha1", pool, "inferencepools", POOL
    )
    deployment = client.AppsV1Api(api).read_namespaced_deployment(f"{POOL}-worker", pool)
    assert body["status"]["observedGeneration"] == body["metadata"]["generation"]
    assert deployment.metadata.owner_references[0].uid == body["metadata"]["uid"]


def test_the_operators_decisions_say_why(pool: str, prometheus_url: str) -> None:
    # The dashboard's "decisions by reason" panel: each series names its action and a reason
    # from the operator's fixed vocabulary.
    selector = f'carpool_control_decisions_total{{namespace="{pool}",pool="{POOL}"}}'
    series = wait_for(
        "the control loop's decisions in Prometheus",
        lambda: prom(prometheus_url, "query", selector)["result"],
        90,
        1,
    )
    labels = {(s["metric"].get("action"), s["metric"].get("reason")) for s in series}
    assert all(reason in DECISION_REASONS for _, reason in labels), labels


def test_the_fuel_ledger_prices_each_endpoints_tokens(pool: str, prometheus_url: str) -> None:
    # The example pool holds one GPU per worker at the chart's price; both endpoints served
    # tokens, so each has a cost, and together they account for the pool's whole spend.
    selector = f'carpool_endpoint_cost_per_million_tokens{{namespace="{pool}",pool="{POOL}"}}'
    series = wait_for(
        "a cost per endpoint",
        lambda: (
            (found := prom(prometheus_url, "query", selector)["result"])
            and len(found) == len(ENDPOINTS)
            and found
        ),
        90,
        1,
    )
    assert all(float(s["value"][1]) > 0 for s in series)
    price = prom(prometheus_url, "query", f'carpool_pool_gpu_hour_price{{namespace="{pool}"}}')
    assert float(price["result"][0]["value"][1]) == float(GPU_HOUR_PRICE)


EXPRESSIONS = dashboard_expressions() + alert_expressions()


@pytest.mark.parametrize(("where", "expr"), EXPRESSIONS, ids=[w for w, _ in EXPRESSIONS])
def test_prometheus_evaluates_the_expression_over_real_series(
    where: str, expr: str, pool: str, prometheus_url: str
) -> None:
    query = grafana_variables(expr, pool)
    tree = prom(prometheus_url, "parse_query", query)  # it parses
    event_only = False

    def series_of(selector: str) -> bool:
        return bool(prom(prometheus_url, "query", f"count({selector})")["result"])

    for selector in selectors(tree):
        name = selector.split("{", 1)[0]
        if selector in ONLY_AFTER_EVENTS or name in ONLY_AFTER_EVENTS:
            event_only = True
            continue
        wait_for(f"series of {selector}", lambda s=selector: series_of(s), 90, 1)
    result = prom(prometheus_url, "query", query)  # it evaluates
    if where.startswith("alert") or event_only:
        return  # healthy: no alert fires, no error counted; every other selector had series
    assert result["result"] or wait_for(
        f"{where} to return series", lambda: prom(prometheus_url, "query", query)["result"], 60, 1
    )


def test_upgrade_with_changed_values_rolls_the_operator(cluster, api, installed: str) -> None:
    helm(
        cluster,
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        installed,
        "--reuse-values",
        "--set",
        "operator.replicaCount=1",
        "--set",
        "operator.logLevel=DEBUG",
        "--wait",
        "--timeout",
        "180s",
    )
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    deployment = apps.read_namespaced_deployment(OPERATOR, installed)
    selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())

    def rolled_out() -> list[client.V1Pod] | None:
        pods = core.list_namespaced_pod(installed, label_selector=selector).items
        new = [p for p in pods if "--log-level=DEBUG" in p.spec.containers[0].args]
        return new if len(pods) == 1 and len(new) == 1 and ready(new[0]) else None

    wait_for("one ready operator pod with the new arguments", rolled_out, 120, 1)
    budgets = client.PolicyV1Api(api).list_namespaced_pod_disruption_budget(installed)
    assert budgets.items == []  # one replica: the chart drops the budget
    assert (
        json.loads(helm(cluster, "status", RELEASE, "-n", installed, "-o", "json"))["version"] == 2
    )


def test_uninstall_leaves_no_operator_objects(cluster, api, installed: str) -> None:
    helm(cluster, "uninstall", RELEASE, "--namespace", installed, "--wait")
    selector = f"app.kubernetes.io/instance={RELEASE}"
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    rbac, custom = client.RbacAuthorizationV1Api(api), client.CustomObjectsApi(api)

    def leftovers() -> list[str]:
        listed = [
            apps.list_namespaced_deployment(installed, label_selector=selector),
            core.list_namespaced_pod(installed, label_selector=selector),
            core.list_namespaced_service(installed, label_selector=selector),
            core.list_namespaced_service_account(installed, label_selector=selector),
            rbac.list_cluster_role(label_selector=selector),
            rbac.list_cluster_role_binding(label_selector=selector),
        ]
        found = [
            f"{o.kind or type(o).__name__}/{o.metadata.name}" for lst in listed for o in lst.items
        ]
        peerings = custom.list_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings")
        found += [
            p["metadata"]["name"] for p in peerings["items"] if p["metadata"]["name"] == RELEASE
        ]
        return found

    wait_for("the operator's objects to be gone", lambda: not leftovers() or None, 90, 1)
    # Helm never deletes the CRDs of crds/ (docs/install.md): the pools outlive the release.
    extensions = client.ApiextensionsV1Api(api)
    assert extensions.read_custom_resource_definition("inferencepools.carpool.dev")
