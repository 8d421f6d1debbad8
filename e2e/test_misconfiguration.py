"""Misconfigurations broken for real, and Prometheus behind credentials: what the pool says.

One pool (the tiny model, one worker that serves on the local cluster) and one operator under
its RBAC identity serve the module. Each test points the pool (or the operator) at a real
Prometheus set up wrong: one that holds the workers' series without the ``namespace`` and
``pool`` labels, one that does not scrape them, one that samples them once a minute, a URL where
nothing listens, and a profile ConfigMap that is missing or not a profile. Each must show a
condition whose message names the fix, an Event, and a ``carpool_pool_metrics_available`` gauge
that agrees with the condition. A Prometheus that samples every 20 s is fresh enough to scale
on but too sparse for the burst window: the pool stays MetricsAvailable=True and says why. The
access tests run the operator against a Prometheus that needs TLS with basic auth (Prometheus'
own ``--web.config.file``) and one behind a proxy that needs a bearer token and a tenant header.
"""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from carpool_cluster import pki, prometheus
from carpool_cluster.processes import free_port
from carpool_cluster.testing import wait_for

from .operator_support import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    delete_pools,
)

NAMESPACE_PREFIX = "misconf"
POOL = "misconf"
# bcrypt of PASSWORD (cost 4), as Prometheus' web config wants it; made with Python 3.11's
# crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)).
PASSWORD = "carpool-e2e"
PASSWORD_HASH = "$2b$04$i4RncOhXcnPp8LFPjjchFekZYaRW8TmaczYaqNN8xyvPLSbgh1wAS"
TOKEN, TENANT = "e2e-bearer-token", "team-a"


def pool_body() -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferencePool",
        "metadata": {"name": POOL},
        "spec": {
            "model": {"preset": "tiny"},
            "worker": {
                "image": "ghcr.io/example/carpool-worker:0.1.0",
                "resources": {"limits": {"nvidia.com/gpu": 1}},
                "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
                "kvCacheSlots": 8,
                "maxContextTokens": 256,
            },
            "replicas": {"min": 1, "max": 1},
            "endpoints": [
                {
                    "name": "chat",
                    "sla": {"ttftP95Milliseconds": 2000},
                    "batching": {"maxBatchSize": {"min": 1, "max": 8}},
                }
            ],
            "scaling": {"mode": "Recommend", "intervalSeconds": 5},
        },
    }


# -- the operator, restartable with other options -------------------------------------------


class Operators:
    def __init__(self, kubeconfig: Path, folder: Path, namespace: str, prometheus_url: str):
        self.kubeconfig, self.folder, self.namespace = kubeconfig, folder, namespace
        self.prometheus_url = prometheus_url
        self.current: OperatorProcess | None = None

    def run(self, *extra_args: str, prometheus_url: str | None = None) -> OperatorProcess:
        self.stop()
        url = prometheus_url or self.prometheus_url
        self.current = OperatorProcess(
            self.kubeconfig,
            self.folder / "operator.log",
            namespaces=[self.namespace],
            resync_seconds=10,
            extra_args=["--prometheus-url", url, *extra_args],
        ).start()
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operators(
    api, ns, operator_kubeconfig, gpu_nodes, prometheus_url, tmp_path_factory
) -> Iterator[Operators]:
    folder = tmp_path_factory.mktemp("operator")
    running = Operators(operator_kubeconfig, folder, ns, prometheus_url)
    running.run()
    yield running
    if running.current is None:
        running.run()
    delete_pools(api, ns)  # while an operator runs, so the finalizer is released
    running.stop()


@pytest.fixture(scope="module")
def pool(api, ns, operators, prometheus_url) -> str:
    """The pool, its worker serving and scraped by the cluster's Prometheus."""
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, pool_body()
    )
    selector = f'carpool_limits_version{{namespace="{ns}", pool="{POOL}"}}'
    wait_for("the worker's series in Prometheus", lambda: query(prometheus_url, selector), 300, 2)
    wait_for("MetricsAvailable=True", lambda: reason_of(api, ns) == "MetricsFresh", 120, 1)
    return ns


@pytest.fixture(scope="module")
def broken_prometheus(prometheus_url, tmp_path_factory) -> Iterator[dict[str, str]]:
    folder = tmp_path_factory.mktemp("prometheus")
    started = {
        "no labels": prometheus.start_federating(
            folder, "nolabels", prometheus_url, drop_labels=("namespace", "pool")
        ),
        "nothing": prometheus.start_federating(folder, "nothing", prometheus_url, federate=False),
        "slow": prometheus.start_federating(folder, "slow", prometheus_url, scrape_interval="60s"),
        # Fresh for a 15 s control interval (stale after 45 s), one sample in any 15 s.
        "sparse": prometheus.start_federating(
            folder, "sparse", prometheus_url, scrape_interval="20s"
        ),
    }
    yield {name: url for name, (_, url) in started.items()}
    for record, _ in started.values():
        prometheus.stop_instance(record)


# -- helpers ---------------------------------------------------------------------------------


def query(url: str, promql: str) -> list:
    body = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10).json()
    return body["data"]["result"]


def condition(api: client.ApiClient, ns: str, type_: str) -> dict | None:
    body = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, POOL
    )
    found = [c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == type_]
    return found[0] if found else None


def reason_of(api: client.ApiClient, ns: str, type_: str = "MetricsAvailable") -> str | None:
    found = condition(api, ns, type_)
    return None if found is None else found["reason"]


def gauge(operator: OperatorProcess, name: str, ns: str) -> float | None:
    for family in text_string_to_metric_families(operator.metrics_text()):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == name and (labels.get("namespace"), labels.get("pool")) == (ns, POOL):
                return sample.value
    return None


def events(api: client.ApiClient, ns: str, reason: str) -> list[str]:
    listed = client.CoreV1Api(api).list_namespaced_event(
        ns, field_selector=f"involvedObject.name={POOL},reason={reason}"
    )
    return [e.message for e in listed.items]


def set_spec(api: client.ApiClient, ns: str, patch: dict) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, POOL, {"spec": patch}
    )


def shows(api, ns: str, operator: OperatorProcess, reason: str) -> dict:
    """Poll until the pool shows MetricsAvailable=False with `reason` and the operator's gauge
    reads 0 for it, then check the Event; return the condition."""

    def agreed() -> dict | None:
        found = condition(api, ns, "MetricsAvailable")
        if found is None or (found["status"], found["reason"]) != ("False", reason):
            return None
        return found if gauge(operator, "carpool_pool_metrics_available", ns) == 0 else None

    found = wait_for(f"MetricsAvailable=False {reason} and the gauge at 0", agreed, 120, 1)
    warned = wait_for(f"a {reason} Event", lambda: events(api, ns, reason), 30, 1)
    assert any(message.endswith("holding replicas and limits") for message in warned), warned
    return found


@pytest.fixture
def healthy_afterwards(api, pool) -> Iterator[None]:
    yield
    set_spec(
        api, pool, {"prometheus": None, "scaling": {"profileConfigMap": "", "intervalSeconds": 5}}
    )
    wait_for("MetricsAvailable=True again", lambda: reason_of(api, pool) == "MetricsFresh", 90, 1)


# -- misconfigurations -----------------------------------------------------------------------


def test_missing_scrape_labels_are_named_with_the_relabel_rules_that_add_them(
    cluster, api, pool, operators, broken_prometheus, healthy_afterwards
) -> None:
    set_spec(api, pool, {"prometheus": {"url": broken_prometheus["no labels"]}})
    found = shows(api, pool, operators.current, "MissingScrapeLabels")
    assert "without the labels namespace, pool" in found["message"]
    assert "prometheus.workers.podMonitor.enabled=true" in found["message"]
    assert "__meta_kubernetes_pod_label_carpool_dev_pool" in found["message"]
    described = subprocess.run(
        [str(cluster.kubectl), "--kubeconfig", str(cluster.kubeconfig), "describe", "-n", pool,
         f"inferencepools.carpool.dev/{POOL}"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    print(described)  # the SRE's view, in the test's output
    assert "MissingScrapeLabels" in described
    assert "__meta_kubernetes_pod_label_carpool_dev_pool" in " ".join(described.split())


def test_a_prometheus_that_does_not_scrape_the_workers_says_so_and_how_to(
    api, pool, operators, broken_prometheus, healthy_afterwards
) -> None:
    set_spec(api, pool, {"prometheus": {"url": broken_prometheus["nothing"]}})
    found = shows(api, pool, operators.current, "NoSamples")
    assert "has no series from this pool's workers" in found["message"]
    assert "does not scrape them" in found["message"]


def test_stale_samples_say_how_often_the_workers_must_be_scraped(
    api, pool, operators, broken_prometheus, healthy_afterwards
) -> None:
    set_spec(api, pool, {"prometheus": {"url": broken_prometheus["slow"]}})
    found = shows(api, pool, operators.current, "MetricsStale")
    assert "younger than 15 s" in found["message"]
    assert "scrape them at least every 5 s" in found["message"]


def test_a_scrape_too_sparse_for_the_burst_window_is_named_and_the_metrics_still_count(
    api, pool, operators, broken_prometheus, healthy_afterwards
) -> None:
    set_spec(
        api,
        pool,
        {"prometheus": {"url": broken_prometheus["sparse"]}, "scaling": {"intervalSeconds": 15}},
    )
    found = wait_for(
        "MetricsAvailable=True BurstWindowMissing",
        lambda: (
            (c := condition(api, pool, "MetricsAvailable"))
            and (c["status"], c["reason"]) == ("True", "BurstWindowMissing")
            and c
        ),
        120,
        1,
    )
    assert "no arrival rate over the last 15 s for chat" in found["message"]
    assert "scrape the workers at least every 7.5 s" in found["message"]
    # The rate window still has its samples: the policy scales on them.
    assert gauge(operators.current, "carpool_pool_metrics_available", pool) == 1


def test_an_unreachable_prometheus_names_the_url_and_where_it_was_set(
    api, pool, operators, healthy_afterwards
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    set_spec(api, pool, {"prometheus": {"url": url}})
    found = shows(api, pool, operators.current, "PrometheusUnavailable")
    assert f"cannot reach {url}" in found["message"]
    assert "spec.prometheus.url" in found["message"]


def test_fixing_prometheus_posts_a_normal_event_and_the_gauge_reads_1(
    api, pool, operators, broken_prometheus
) -> None:
    set_spec(api, pool, {"prometheus": {"url": broken_prometheus["nothing"]}})
    shows(api, pool, operators.current, "NoSamples")
    set_spec(api, pool, {"prometheus": None})
    wait_for("MetricsFresh", lambda: reason_of(api, pool) == "MetricsFresh", 90, 1)
    wait_for("a MetricsFresh Event", lambda: events(api, pool, "MetricsFresh"), 30, 1)
    wait_for(
        "the gauge at 1",
        lambda: gauge(operators.current, "carpool_pool_metrics_available", pool) == 1,
        30,
        1,
    )


def test_a_missing_profile_configmap_is_named_with_how_to_make_it(
    api, pool, operators, healthy_afterwards
) -> None:
    set_spec(api, pool, {"scaling": {"profileConfigMap": "no-such-profile"}})
    found = wait_for(
        "ProfileLoaded=False ConfigMapNotFound",
        lambda: (c := condition(api, pool, "ProfileLoaded")) and c["status"] == "False" and c,
        90,
        1,
    )
    assert found["reason"] == "ConfigMapNotFound"
    assert "no-such-profile" in found["message"] and "kubectl create configmap" in found["message"]
    assert wait_for("a ConfigMapNotFound Event", lambda: events(api, pool, "ConfigMapNotFound"))
    assert gauge(operators.current, "carpool_pool_profile_loaded", pool) == 0
    # A profile missing is no reason to distrust the metrics.
    assert gauge(operators.current, "carpool_pool_metrics_available", pool) == 1


def test_a_profile_that_is_not_json_says_where_it_breaks(
    api, pool, operators, healthy_afterwards
) -> None:
    client.CoreV1Api(api).create_namespaced_config_map(
        pool,
        {"metadata": {"name": "broken-profile"}, "data": {"profile.json": '{"schema": '}},
    )
    set_spec(api, pool, {"scaling": {"profileConfigMap": "broken-profile"}})
    found = wait_for(
        "ProfileLoaded=False ProfileInvalid",
        lambda: (
            (c := condition(api, pool, "ProfileLoaded")) and c["reason"] == "ProfileInvalid" and c
        ),
        90,
        1,
    )
    assert "profile.json of ConfigMap broken-profile is not JSON" in found["message"]
    assert wait_for("a ProfileInvalid Event", lambda: events(api, pool, "ProfileInvalid"))


# -- Prometheus access -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_basic_auth_prometheus(prometheus_url, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A Prometheus serving HTTPS (a certificate for 127.0.0.1 from a test CA) that requires
    basic auth, federating the cluster's carpool series; yields its URL and the CA file."""
    folder = tmp_path_factory.mktemp("tls-prometheus")
    certs = pki.create_pki(folder / "pki")
    web = {
        "tls_server_config": {
            "cert_file": str(certs.apiserver.cert),
            "key_file": str(certs.apiserver.key),
        },
        "basic_auth_users": {"carpool": PASSWORD_HASH},
    }
    record, url = prometheus.start_federating(folder, "tls", prometheus_url, web_config=web)
    yield url, certs.ca.cert
    prometheus.stop_instance(record)


@pytest.fixture(scope="module")
def bearer_proxy(prometheus_url) -> Iterator[str]:
    """Prometheus behind a proxy that answers 401 without `Authorization: Bearer TOKEN` and
    `X-Scope-OrgID: TENANT` (as a Mimir or Thanos gateway does)."""

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            bearer = self.headers.get("Authorization") == f"Bearer {TOKEN}"
            if not bearer or self.headers.get("X-Scope-OrgID") != TENANT:
                self.send_response(401)
                self.end_headers()
                self.wfile.write(b"missing bearer token or tenant")
                return
            answer = httpx.get(f"{prometheus_url}{self.path}", timeout=20)
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", "text/plain"))
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_prometheus_behind_a_bearer_token_and_tenant_header_is_read(
    api, pool, operators, bearer_proxy, tmp_path
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    operators.run(prometheus_url=bearer_proxy)
    shows(api, pool, operators.current, "PrometheusUnavailable")
    found = condition(api, pool, "MetricsAvailable")
    assert "answered 401" in found["message"]
    assert "operator.prometheus.bearerTokenSecret" in found["message"]
    operators.run(
        "--prometheus-bearer-token-file", str(token),
        "--prometheus-header", f"X-Scope-OrgID={TENANT}",
        prometheus_url=bearer_proxy,
    )  # fmt: skip
    wait_for("MetricsFresh through the proxy", lambda: reason_of(api, pool) == "MetricsFresh", 90)
    operators.run()


def test_a_prometheus_with_tls_and_basic_auth_is_read_with_its_ca(
    api, pool, operators, tls_basic_auth_prometheus, tmp_path
) -> None:
    url, ca = tls_basic_auth_prometheus
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    operators.run(
        "--prometheus-basic-auth-username", "carpool",
        "--prometheus-basic-auth-password-file", str(password),
        "--prometheus-ca-file", str(ca),
        prometheus_url=url,
    )  # fmt: skip
    wait_for("MetricsFresh over TLS", lambda: reason_of(api, pool) == "MetricsFresh", 90, 1)
    operators.run()


def test_a_prometheus_certificate_from_an_unknown_ca_is_refused_until_skip_verify(
    api, pool, operators, tls_basic_auth_prometheus, tmp_path
) -> None:
    url, _ = tls_basic_auth_prometheus
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    auth = ["--prometheus-basic-auth-username", "carpool",
            "--prometheus-basic-auth-password-file", str(password)]  # fmt: skip
    operators.run(*auth, prometheus_url=url)
    found = shows(api, pool, operators.current, "PrometheusUnavailable")
    assert "TLS verification" in found["message"] and "caBundle" in found["message"]
    skipping = operators.run(*auth, "--prometheus-insecure-skip-verify", prometheus_url=url)
    wait_for("MetricsFresh", lambda: reason_of(api, pool) == "MetricsFresh", 90, 1)
    assert "TLS verification of Prometheus at" in skipping.log(200)
    operators.run()
