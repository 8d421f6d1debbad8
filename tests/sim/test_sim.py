"""End to end: the event loop, static provisioning, the CLI and its JSON document."""

from __future__ import annotations

import json

import numpy as np
import pytest

from carpool_sim.cli import main
from carpool_sim.controllers import Static
from carpool_sim.report import summarize
from carpool_sim.scenario import build_requests, load_pool, load_profile
from carpool_sim.sim import SimConfig, simulate

CHAT = "chat=poisson:rate=20,prompt=800,output=20,jitter=0.5"
BATCH = "batch=poisson:rate=2,prompt=500,output=100"


@pytest.fixture
def scenario(pool_file, profile_file):
    requests, _ = build_requests(
        [("chat", CHAT.split("=", 1)[1]), ("batch", BATCH.split("=", 1)[1])],
        duration_seconds=120.0,
        seed=1,
    )
    return load_pool(pool_file), load_profile(profile_file), requests


def run_static(scenario, replicas):
    spec, profile, requests = scenario
    return simulate(requests, spec, profile, Static(replicas), SimConfig())


def test_every_request_is_resolved(scenario):
    result = run_static(scenario, 2)
    assert result.recorder.resolved == len(scenario[2])


def test_static_gpu_hours_are_replicas_times_the_run(scenario):
    result = run_static(scenario, 3)
    assert result.gpu_seconds == pytest.approx(3 * result.end_seconds)


def test_more_replicas_never_lower_attainment(scenario):
    spec = scenario[0]
    one = summarize(run_static(scenario, 1), spec, 1.0)["endpoints"]["chat"]["sla_attainment"]
    four = summarize(run_static(scenario, 4), spec, 1.0)["endpoints"]["chat"]["sla_attainment"]
    assert four >= one
    assert four > 0.99


def queue_wait_p95(scenario, replicas: int, **config) -> float:
    spec, profile, requests = scenario
    result = simulate(requests, spec, profile, Static(replicas), SimConfig(**config))
    return float(np.nanpercentile(result.recorder.queue_wait, 95))


def test_a_random_routing_queues_behind_busy_pods_that_a_least_request_gateway_avoids(scenario):
    """Per-pod queues (the pool's Service) are slower than one pooled queue (a gateway that
    sends each request to the pod with the fewest in flight): the reason the policy's model
    plans each replica as its own queue."""
    gateway = queue_wait_p95(scenario, 6)
    service = queue_wait_p95(scenario, 6, routing="random")
    assert service > 2 * gateway


def test_a_random_routing_is_drawn_from_its_seed(scenario):
    first = queue_wait_p95(scenario, 2, routing="random", routing_seed=1)
    assert queue_wait_p95(scenario, 2, routing="random", routing_seed=1) == first
    assert queue_wait_p95(scenario, 2, routing="random", routing_seed=2) != first


def test_an_unknown_routing_is_refused_with_the_known_ones(scenario):
    with pytest.raises(ValueError, match="expected one of least-request, random"):
        queue_wait_p95(scenario, 2, routing="round-robin")


def test_a_new_pod_serves_nothing_before_its_start_up_delay(scenario):
    spec, profile, requests = scenario

    class ScaleAtTen:
        name, interval_seconds = "step", 10.0

        def initial_replicas(self):
            return 1

        def control(self, view):
            from carpool_sim.controllers import Action

            return Action(2 if view.now >= 10.0 else 1)

    config = SimConfig(startup_seconds=45.0, timeline_interval_seconds=1.0)
    result = simulate(requests, spec, profile, ScaleAtTen(), config)
    ready = {t: r for t, _, r in result.timeline}
    assert ready[54.0] == 1
    assert ready[55.0] == 2


def cli(pool_file, profile_file, *extra):
    return [
        "--pool", str(pool_file), "--profile", str(profile_file),
        "--trace", CHAT, "--trace", BATCH, "--duration", "90", "--seed", "3", *extra,
    ]  # fmt: skip


def test_json_has_every_policy_and_endpoint(pool_file, profile_file, capsys):
    assert main(cli(pool_file, profile_file, "--json", "--static-replicas", "2")) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document["policies"]) == {"carpool", "hpa-gpu", "keda-queue", "kpa", "static"}
    for summary in document["policies"].values():
        assert isinstance(summary["gpu_hours"], float)
        assert isinstance(summary["scale_events"], int)
        chat = summary["endpoints"]["chat"]
        assert 0.0 <= chat["sla_attainment"] <= 1.0
        assert chat["ttft_p95_seconds"] > 0


def test_the_routing_is_chosen_on_the_command_line_and_recorded(pool_file, profile_file, capsys):
    def run(*routing: str) -> dict:
        args = cli(
            pool_file, profile_file, "--json", "--policy", "static", "--static-replicas", "2"
        )
        assert main([*args, *routing]) == 0
        return json.loads(capsys.readouterr().out)

    gateway, service = run(), run("--routing", "random")
    assert (gateway["scenario"]["routing"], service["scenario"]["routing"]) == (
        "least-request",
        "random",
    )
    assert gateway["policies"] != service["policies"]


def test_same_seed_same_document(pool_file, profile_file, capsys):
    args = cli(pool_file, profile_file, "--json", "--policy", "carpool,kpa")
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first


def test_plot_writes_a_png(pool_file, profile_file, tmp_path, capsys):
    args = cli(pool_file, profile_file, "--policy", "kpa,static", "--static-replicas", "1")
    assert main([*args, "--plot", str(tmp_path)]) == 0
    assert (tmp_path / "replicas-ttft.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--trace", "nope=poisson:rate=1"), "no endpoint 'nope'"),
        (("--trace", "chat=/does/not/exist.csv"), "cannot open"),
        (("--policy", "carpool,magic"), "unknown policy magic"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(pool_file, profile_file, capsys, change, message):
    assert main([*cli(pool_file, profile_file), *change]) == 2
    assert message in capsys.readouterr().err
