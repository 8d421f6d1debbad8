"""The closed loop on a real cluster: load → queue delay → scale and retune → load gone → back.

One operator (under the chart's RBAC) and workers on emulated H200 GPUs serve the module: each
worker runs the real scheduler, HTTP API and metrics and sleeps each step's time from the H200
bench-8b profile, so capacity grows with replicas as on GPUs (CPU workers would share this
machine's cores). The real model path is covered on the tiny model by the chart and pod tests.
The tests run in order on the module's pool, each driving real traffic through
``carpool_cluster.load``. With
``CARPOOL_E2E_OPERATOR=chart`` the operator is the one the Helm chart installed, and the
operator-restart test deletes its pod instead of killing a local process.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kubernetes import client

from carpool_bench import loop as bench_loop
from carpool_cluster import load, processes, prometheus, scenario, testing
from carpool_cluster.testing import wait_for
from carpool_operator.prometheus import PrometheusAccess, fetch_pool_metrics
from carpool_policy.tuning import DEFAULT_TUNING
from carpool_replica.profile import Profile

from .operator_support import delete_pools

INTERVAL = 5  # spec.scaling.intervalSeconds
STABILIZATION = 20  # spec.scaling.scaleDownStabilizationSeconds
# The loop pool's 3 replicas come back to 1 in two scale-down steps, the second a pace period
# after the first (the policy takes one step a minute), once the window has passed.
BACK_TO_ONE_SECONDS = STABILIZATION + 2 * DEFAULT_TUNING.scale_down_period_seconds + 30
RATE_WINDOW = 20  # the operator's PromQL rate window (scenario.start_operator's default)
SLA_SECONDS = 0.5
PROMPT_TOKENS, MAX_TOKENS = 1000, 12  # prefill-heavy, like the code-completion trace
# A burst's arrival rate over one worker's saturated throughput: past saturation its queue
# grows and breaks the 500 ms SLA, and two workers hold it.
OVERLOAD = 1.2
PROFILE = "h200-bench-8b.json"  # in profiles/: what the emulated GPUs sleep
SLICE_SECONDS = 150.0  # the trace slice the simulator's prediction is checked on
# The prediction's test band, on replica-minutes. The target is 15% for them and for the p95
# TTFT (docs/fidelity.md); this band only catches a simulator and a loop that disagree
# grossly. On the shared two-core machine the ratio ranged from 0.94 to 1.42 between runs, and
# the clients' p95 from 0.33 to 1.15 s (printed, not asserted): HTTP and the load generator take
# CPU the simulator does not model (docs/fidelity.md has the runs).
REPLICA_MINUTES_TOLERANCE = 0.5
CHART_OPERATOR = os.environ.get("CARPOOL_E2E_OPERATOR") == "chart"


def pool_manifest(name: str, max_replicas: int) -> dict:
    return {
        "apiVersion": "carpool.dev/v1alpha1",
        "kind": "InferencePool",
        "metadata": {"name": name},
        "spec": {
            "model": {"preset": "bench-8b", "emulatedGPU": True},
            "worker": {
                "image": os.environ.get(
                    "CARPOOL_WORKER_IMAGE", "ghcr.io/example/carpool-worker:0.1.0"
                ),
                "resources": {"limits": {"nvidia.com/gpu": 1}},
            },
            "replicas": {"min": 1, "max": max_replicas},
            "endpoints": [
                {
                    "name": "interactive",
                    "priority": 100,
                    "default": True,
                    "sla": {"ttftP95Milliseconds": int(SLA_SECONDS * 1000)},
                    "batching": {
                        "maxBatchSize": {"min": 1, "max": 16},
                        "batchWindowMilliseconds": {"min": 0, "max": 5},
                    },
                    "queue": {"maxWaitMilliseconds": 10000, "maxLength": 1024},
                },
                {
                    "name": "offline",
                    "priority": 0,
                    "batching": {
                        "maxBatchSize": {"min": 2, "max": 32},
                        "batchWindowMilliseconds": {"min": 0, "max": 200},
                    },
                    "queue": {"maxWaitMilliseconds": 60000, "maxLength": 4096},
                },
            ],
            "scaling": {
                "mode": "Auto",
                "intervalSeconds": INTERVAL,
                "scaleDownStabilizationSeconds": STABILIZATION,
                "maxScaleUpStep": 2,
                "profileConfigMap": f"{name}-profile",
            },
        },
    }


class Loop:
    """The module's cluster, namespace, operator and helpers to watch a pool."""

    def __init__(
        self,
        cluster: testing.TestCluster,
        api: client.ApiClient,
        namespace: str,
        folder: Path,
        prometheus_url: str,
    ):
        self.cluster, self.api, self.namespace = cluster, api, namespace
        self.folder, self.prometheus_url = folder, prometheus_url
        self.operator: processes.ProcessRecord | None = None

    def start_operator(self) -> None:
        if CHART_OPERATOR:
            return
        identity = scenario.operator_kubeconfig(
            self.api, self.cluster.server, self.cluster.ca_file, self.folder
        )
        self.operator = scenario.start_operator(
            identity,
            self.prometheus_url,
            self.folder / "operator.log",
            extra_args=("--namespace", self.namespace),
        )

    def kill_operator(self) -> None:
        if CHART_OPERATOR:
            pods = (
                client.CoreV1Api(self.api)
                .list_namespaced_pod(
                    "carpool-system", label_selector="app.kubernetes.io/name=carpool"
                )
                .items
            )
            for pod in pods:
                client.CoreV1Api(self.api).delete_namespaced_pod(
                    pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0
                )
            return
        assert self.operator is not None
        os.killpg(self.operator.pid, signal.SIGKILL)
        wait_for("the operator to die", lambda: not processes.is_running(self.operator))

    def stop_operator(self) -> None:
        if self.operator is not None:
            processes.stop(self.operator)

    def patch_spec(self, name: str, spec: dict) -> None:
        client.CustomObjectsApi(self.api).patch_namespaced_custom_object(
            scenario.GROUP,
            scenario.VERSION,
            self.namespace,
            scenario.PLURAL,
            name,
            {"spec": spec},
        )

    def limits(self, name: str) -> dict:
        return {
            n: (e.get("maxBatchSize"), e.get("batchWindowMilliseconds"))
            for n, e in self.snapshot(name)["endpoints"].items()
        }

    def snapshot(self, name: str) -> dict:
        return scenario.pool_snapshot(self.api, self.namespace, name)

    def condition(self, name: str, type_: str) -> dict:
        return self.snapshot(name)["conditions"].get(type_) or {}

    def directory(self, name: str) -> load.PodDirectory:
        return load.PodDirectory(self.api, self.namespace, f"carpool.dev/pool={name}", 8000)


@pytest.fixture(scope="module")
def loop(
    cluster: testing.TestCluster,
    api: client.ApiClient,
    gpu_nodes: None,
    prometheus_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Loop]:
    scenario.install_crds(cluster.kubectl, cluster.kubeconfig)
    namespace = testing.create_namespace(api, "loop")
    harness = Loop(cluster, api, namespace, tmp_path_factory.mktemp("loop"), prometheus_url)
    harness.start_operator()
    try:
        yield harness
    finally:
        delete_pools(api, namespace)  # while the operator runs: it releases the finalizers
        harness.stop_operator()
        client.CoreV1Api(api).delete_namespace(namespace)


@pytest.fixture(scope="module")
def pool(loop: Loop) -> str:
    scenario.apply_pool(
        loop.api, loop.namespace, pool_manifest("loop", max_replicas=3), profile=PROFILE
    )
    wait_for(
        "one ready worker with fresh metrics",
        lambda: (
            loop.snapshot("loop")["ready"] >= 1
            and loop.condition("loop", "MetricsAvailable").get("status") == "True"
        ),
        180,
    )
    return "loop"


@pytest.fixture(scope="module")
def overload_rate(loop: Loop, pool: str) -> float:
    """An arrival rate that one worker cannot keep within the SLA and two can."""
    with loop.directory(pool) as directory:
        wait_for("the pool's worker in the directory", lambda: directory.addresses, 30)
        capacity = one_worker_capacity(directory)
    print(f"one worker completes {capacity:.1f} requests/s; bursts arrive at {OVERLOAD}x that")
    return OVERLOAD * capacity


def burst(rate: float, seconds: float) -> list[load.Arrival]:
    return load.poisson(
        "interactive", rate, seconds, prompt_tokens=PROMPT_TOKENS, max_tokens=MAX_TOKENS
    )


def one_worker_capacity(directory: load.PodDirectory) -> float:
    """Requests per second one worker completes when it has more than it can take at once.

    Measured rather than read from the profile: the emulated GPU's time is the profile's, but
    HTTP and the engine loop run on this machine's shared CPU. It is measured as throughput (a
    batch of requests sent together, so continuous batching counts) and the best of three
    rounds (a moment of contention only makes a round slower).
    """
    best = 0.0
    for _round in range(3):
        together = [load.Arrival(0.0, "interactive", PROMPT_TOKENS, MAX_TOKENS)] * 24
        outcomes = [o for o in load.replay(together, directory, 60) if o.status == 200]
        assert len(outcomes) >= 20, f"the calibration requests failed: {outcomes}"
        span = max(o.finished_at for o in outcomes) - min(o.sent_at for o in outcomes)
        best = max(best, len(outcomes) / span)
    return best


def run_in_background(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def client_p95(outcomes: list[load.Outcome], since: float) -> float | None:
    values = sorted(
        o.ttft_seconds for o in outcomes if o.ttft_seconds is not None and o.sent_at >= since
    )
    return values[int(0.95 * (len(values) - 1))] if values else None


def p95_timeline(outcomes: list[load.Outcome], step: float = 5.0) -> str:
    """The clients' p95 TTFT per `step` seconds of sending, for a failure message."""
    if not outcomes:
        return "no request finished"
    end = max(o.sent_at for o in outcomes)
    parts = []
    for start in range(0, int(end) + 1, int(step)):
        window = [o for o in outcomes if start <= o.sent_at < start + step]
        p95 = client_p95(window, start)
        parts.append(f"{start}s:{'-' if p95 is None else f'{p95:.2f}'}")
    return "p95 TTFT by second sent: " + " ".join(parts)


def test_burst_scales_up_within_two_intervals_and_the_sla_is_met_again(
    loop: Loop, pool: str, overload_rate: float
) -> None:
    outcomes: list[load.Outcome] = []
    signal_at: list[float] = []
    with loop.directory(pool) as directory:
        started = time.monotonic()
        traffic = run_in_background(
            lambda: load.replay(
                burst(overload_rate, 80), directory, 110, on_outcome=outcomes.append
            )
        )

        def pressure_seen() -> bool:
            # The signal: the workers' own queue, as Prometheus sees it.
            query = f'sum(carpool_requests_waiting{{namespace="{loop.namespace}",pool="{pool}"}})'
            result = httpx.get(
                f"{loop.prometheus_url}/api/v1/query", params={"query": query}, timeout=5
            ).json()["data"]["result"]
            if result and float(result[0]["value"][1]) >= 2 and not signal_at:
                signal_at.append(time.monotonic())
            return loop.snapshot(pool)["desired"] > 1

        wait_for("a scale-up", pressure_seen, 90, interval_seconds=0.5)
        scaled_at = time.monotonic()
        # The policy may act on the rising arrival rate before any queue forms; when a queue
        # did show first, the scale-up must follow within two control intervals (plus one
        # scrape interval for the signal to be stored).
        if signal_at:
            assert scaled_at - signal_at[0] <= 2 * INTERVAL + 2, (
                f"scale-up {scaled_at - signal_at[0]:.1f}s after the queue signal"
            )
        # Either way: within the rate window plus two control intervals of the burst's start.
        assert scaled_at - started <= RATE_WINDOW + 2 * INTERVAL + 2, (
            f"scale-up {scaled_at - started:.1f}s after the burst started"
        )

        def sla_met_again() -> bool:
            recent = time.monotonic() - started - 10
            p95 = client_p95(list(outcomes), recent)
            return p95 is not None and p95 <= SLA_SECONDS and loop.snapshot(pool)["ready"] > 1

        try:
            wait_for("the clients' p95 TTFT back within the SLA", sla_met_again, 75)
        except AssertionError as error:
            raise AssertionError(f"{error}; {p95_timeline(outcomes)}") from None
        # The prompt mix the policy prices prefill over, and the burst window's arrivals the
        # burst reserve keeps pods for, read by the operator's own PromQL.
        seen = fetch_pool_metrics(PrometheusAccess(loop.prometheus_url))[(loop.namespace, pool)]
        mixes = [e.prompt_length_buckets for e in seen.endpoints.values()]
        assert any(sum(rate for _, rate in mix or ()) > 0 for mix in mixes), mixes
        bursts = [e.burst_arrival_rate_per_second for e in seen.endpoints.values()]
        assert any((rate or 0.0) > 0 for rate in bursts), bursts
        traffic.join(timeout=120)
    ok = sum(1 for o in outcomes if o.status == 200)
    assert ok >= 0.95 * len(outcomes), f"only {ok} of {len(outcomes)} requests succeeded"


def test_load_gone_scales_down_only_after_stabilization_without_flapping(
    loop: Loop, pool: str, overload_rate: float
) -> None:
    with loop.directory(pool) as directory:
        traffic = run_in_background(lambda: load.replay(burst(overload_rate, 60), directory, 80))
        wait_for("a scale-up under load", lambda: loop.snapshot(pool)["desired"] > 1, 75, 0.5)
        traffic.join(timeout=90)
    quiet_since = time.monotonic()
    history: list[tuple[float, int]] = []

    def back_at_minimum() -> bool:
        history.append((time.monotonic() - quiet_since, loop.snapshot(pool)["desired"]))
        return history[-1][1] == 1

    wait_for("the pool back at one replica", back_at_minimum, BACK_TO_ONE_SECONDS, 1.0)
    steps = list(zip(history, history[1:], strict=False))
    assert all(after <= before for (_, before), (_, after) in steps), (
        f"replicas rose again while the load was gone: {history}"
    )
    first_down = next((t for (_, before), (t, after) in steps if after < before), None)
    assert first_down is not None, f"no scale-down was seen: {history}"
    assert first_down >= STABILIZATION - INTERVAL, (
        f"scaled down {first_down:.0f}s after the load stopped, inside the "
        f"{STABILIZATION}s stabilization window"
    )


def test_offline_limits_shrink_under_interactive_pressure_and_grow_back(
    loop: Loop, overload_rate: float
) -> None:
    name = "tight"
    scenario.apply_pool(
        loop.api, loop.namespace, pool_manifest(name, max_replicas=1), profile=PROFILE
    )
    wait_for(
        "the tight pool ready with fresh metrics",
        lambda: (
            loop.snapshot(name)["ready"] >= 1
            and loop.condition(name, "MetricsAvailable").get("status") == "True"
        ),
        180,
    )
    wait_for(
        "the offline endpoint at its largest batch while the pool is idle",
        lambda: loop.snapshot(name)["endpoints"]["offline"].get("maxBatchSize") == 32,
        60,
    )
    with loop.directory(name) as directory:
        traffic = run_in_background(lambda: load.replay(burst(overload_rate, 50), directory, 70))
        shrunk = wait_for(
            "the offline endpoint's batch limit to shrink",
            lambda: (
                (size := loop.snapshot(name)["endpoints"]["offline"].get("maxBatchSize"))
                is not None
                and size < 32
                and size
            ),
            60,
        )
        traffic.join(timeout=90)
    assert shrunk >= 2  # never below the spec's minimum
    wait_for(
        "the offline endpoint back at its largest batch once the burst is over",
        lambda: loop.snapshot(name)["endpoints"]["offline"].get("maxBatchSize") == 32,
        STABILIZATION + 90,
    )


def test_prometheus_unreachable_holds_replicas_and_limits_then_control_resumes(
    loop: Loop, pool: str
) -> None:
    before = loop.snapshot(pool)
    local = loop.cluster.local
    limits_before = loop.limits(pool)
    if local is not None:
        prometheus.stop(local)  # the real thing, stopped
    else:  # a cluster's own Prometheus cannot be stopped from here: point the pool elsewhere
        loop.patch_spec(pool, {"prometheus": {"url": "http://127.0.0.1:1"}})
    try:
        condition = wait_for(
            "MetricsAvailable=False",
            lambda: (c := loop.condition(pool, "MetricsAvailable")).get("status") == "False" and c,
            4 * INTERVAL,
        )
        assert "Prometheus" in condition["message"]
        held_until = time.monotonic() + 3 * INTERVAL
        while time.monotonic() < held_until:
            now = loop.snapshot(pool)
            assert now["desired"] == before["desired"]
            assert loop.limits(pool) == limits_before
            time.sleep(1)
    finally:
        if local is not None:
            prometheus.start(local)
        else:
            loop.patch_spec(pool, {"prometheus": None})
    wait_for(
        "MetricsAvailable=True again",
        lambda: loop.condition(pool, "MetricsAvailable").get("status") == "True",
        60,
    )


def test_operator_killed_mid_scale_converges_with_no_duplicates(
    loop: Loop, pool: str, overload_rate: float
) -> None:
    apps = client.AppsV1Api(loop.api)
    with loop.directory(pool) as directory:
        traffic = run_in_background(lambda: load.replay(burst(overload_rate, 45), directory, 70))
        wait_for("a scale-up", lambda: loop.snapshot(pool)["desired"] > 1, 60, 0.5)
        loop.kill_operator()
        loop.start_operator()
        traffic.join(timeout=90)
    wait_for(
        "the restarted operator deciding again",
        lambda: loop.condition(pool, "MetricsAvailable").get("status") == "True",
        60,
    )
    deployments = apps.list_namespaced_deployment(
        loop.namespace, label_selector=f"carpool.dev/pool={pool}"
    ).items
    assert len(deployments) == 1
    config_maps = (
        client.CoreV1Api(loop.api)
        .list_namespaced_config_map(loop.namespace, label_selector=f"carpool.dev/pool={pool}")
        .items
    )
    assert len(config_maps) == 1
    wait_for(
        "the pool back at one replica under the new operator",
        lambda: loop.snapshot(pool)["desired"] == 1,
        BACK_TO_ONE_SECONDS,
        1.0,
    )


def test_worker_pod_killed_traffic_continues_on_the_others(
    loop: Loop, pool: str, overload_rate: float
) -> None:
    core = client.CoreV1Api(loop.api)
    loop.patch_spec(pool, {"replicas": {"min": 2}})
    wait_for("two ready workers", lambda: loop.snapshot(pool)["ready"] >= 2, 120)
    outcomes: list[load.Outcome] = []
    with loop.directory(pool) as directory:
        traffic = run_in_background(
            lambda: load.replay(
                burst(overload_rate / 3, 30), directory, 45, on_outcome=outcomes.append
            )
        )
        time.sleep(8)
        victim = sorted(directory.addresses)[0]
        core.delete_namespaced_pod(victim, loop.namespace, grace_period_seconds=0)
        killed_at = time.monotonic()
        traffic.join(timeout=60)
    after = [o for o in outcomes if o.pod and o.pod != victim and o.status == 200]
    failed = [o for o in outcomes if o.status != 200]
    assert after, "no request was served by the remaining workers"
    assert len(failed) <= 0.05 * len(outcomes), (
        f"{len(failed)} of {len(outcomes)} requests failed after {victim} was killed"
    )
    assert killed_at  # the kill happened while traffic was flowing


def test_the_simulator_predicts_the_loop_on_a_trace_slice(loop: Loop) -> None:
    """`carpool sim`, given the same arrivals, pool and profile, predicts this loop's
    replica-minutes; the interactive p95 TTFT of both is printed (docs/fidelity.md)."""
    # The simulator models this pool alone, with every pod it asks for: the module's other
    # pools go first and give their GPUs back, and the pool may not ask for more than the
    # nodes hold (gpu_nodes: 2 x 2).
    delete_pools(loop.api, loop.namespace)
    wait_for(
        "the other pools' workers gone",
        lambda: (
            not client.CoreV1Api(loop.api)
            .list_namespaced_pod(loop.namespace, label_selector="carpool.dev/pool")
            .items
        ),
        120,
    )
    name = "predicted"
    manifest = pool_manifest(name, max_replicas=4)
    applied_at = time.monotonic()
    scenario.apply_pool(loop.api, loop.namespace, manifest, profile=PROFILE)
    wait_for(
        "the predicted pool ready with fresh metrics",
        lambda: (
            loop.snapshot(name)["ready"] >= 1
            and loop.condition(name, "MetricsAvailable").get("status") == "True"
        ),
        180,
    )
    startup_seconds = time.monotonic() - applied_at
    schedule = load.schedule_from_trace(
        scenario.REPO / "traces" / "azure-llm-2023-code.csv", "interactive",
        start_seconds=1080, duration_seconds=SLICE_SECONDS, rate_multiplier=0.5,
        timing="poisson", burst=(40.0, 100.0, 4.0), token_divisor=1.0, max_prompt_tokens=8000,
        max_output_tokens=64,
    )  # fmt: skip
    samples: list[tuple[float, int, int]] = []
    with loop.directory(name) as directory:
        origin = time.monotonic()
        outcomes: list[load.Outcome] = []
        traffic = run_in_background(
            lambda: outcomes.extend(load.replay(schedule, directory, SLICE_SECONDS + 30))
        )
        while traffic.is_alive() and time.monotonic() - origin < SLICE_SECONDS + 40:
            snapshot = loop.snapshot(name)
            samples.append((time.monotonic() - origin, snapshot["desired"], snapshot["ready"]))
            time.sleep(1.0)
        traffic.join(timeout=60)
    measured = bench_loop.measured(outcomes, [(t, d) for t, d, _ in samples], SLICE_SECONDS)
    # A scaled-up pod's start-up as this loop showed it; the first pod's (which includes the
    # pool's creation) only when the pool never scaled.
    startup_seconds = bench_loop.startup_seconds(samples) or startup_seconds
    profile = Profile.from_dict(json.loads((scenario.PROFILES / PROFILE).read_text()))
    predicted = bench_loop.predict(
        schedule, manifest["spec"], profile, startup_seconds=startup_seconds,
        scrape_interval_seconds=prometheus.scrape_interval_seconds(),
        rate_window_seconds=scenario.RATE_WINDOW_SECONDS, until_seconds=SLICE_SECONDS,
    )  # fmt: skip
    ratio = bench_loop.ratios(predicted, measured)
    print(json.dumps({"measured": measured, "predicted": predicted, "ratio": ratio,
                      "startup_seconds": startup_seconds}))  # fmt: skip
    assert abs(ratio["replica_minutes"] - 1) <= REPLICA_MINUTES_TOLERANCE, (measured, predicted)
