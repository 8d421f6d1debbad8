"""``carpool demo``: carpool's main job, end to end, on a local cluster in a few minutes.

Contract: brings up a real control plane, Prometheus and a process kubelet with GPU nodes;
installs the CRDs and runs the operator under the chart's RBAC; applies
``examples/demo-pool.yaml`` (an interactive endpoint with a TTFT SLA, an offline endpoint
without one, bench-8b on emulated H200 GPUs timed by ``--profile``); replays a slice of the
shared code-completion trace (its own token counts, prompts capped at the profile's context)
with a burst, plus a steady offline stream; shows a live terminal view of replicas, per-endpoint p95
TTFT against the SLA and the batch limits; then prints a summary table, writes a PNG timeline
and a JSON record to ``--out``, and tears everything down, on Ctrl-C too. Exit 0 when the
story completed (it reports, it does not judge, whether the SLA held).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from kubernetes import client, config

from carpool_bench import loop
from carpool_cluster import controlplane, kubelet, load, processes, prometheus, scenario
from carpool_cluster.timeline import Timeline, render_live, summary_table, write_png
from carpool_replica.profile import Profile

NAMESPACE = "demo"
# The trace's requests as recorded, within the H200 profile's 8,704-token context.
DEMO_MAX_PROMPT_TOKENS, DEMO_MAX_OUTPUT_TOKENS = 8000, 512


def trace_path() -> Path:
    return scenario.REPO / "traces" / "azure-llm-2023-code.csv"


def missing_files(pool: Path) -> list[Path]:
    """What the demo reads from a checkout of the repository and cannot find.

    The CRDs, the chart's RBAC, the profiles and the trace are repository files, not package
    data: the demo runs from a checkout (``make demo``), not from an installed wheel.
    """
    needed = [scenario.CRDS, scenario.RBAC_RULES, scenario.PROFILES, trace_path(), pool]
    return [path for path in needed if not path.exists()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carpool demo", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path, default=scenario.REPO / ".state" / "demo")
    parser.add_argument("--out", type=Path, default=scenario.REPO / "out" / "demo")
    parser.add_argument("--pool", type=Path, default=scenario.REPO / "examples" / "demo-pool.yaml")
    parser.add_argument(
        "--profile",
        default="h200-bench-8b.json",
        help="the pool's profile, a file in profiles/ (an emulated GPU sleeps its step times)",
    )
    parser.add_argument("--gpu-nodes", type=int, default=4)
    parser.add_argument("--gpus-per-node", type=int, default=4)
    parser.add_argument(
        "--base-seconds", type=float, default=45.0, help="steady traffic before the burst"
    )
    parser.add_argument("--burst-seconds", type=float, default=60.0)
    parser.add_argument(
        "--after-seconds", type=float, default=45.0, help="steady traffic after the burst"
    )
    parser.add_argument(
        "--trace-start-seconds",
        type=float,
        default=1080.0,
        help="where the replayed slice starts in the one-hour trace",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=1.5,
        help="the trace's request rate multiplier (the default slice averages ~5.5/s)",
    )
    parser.add_argument("--burst-factor", type=float, default=5.0)
    parser.add_argument(
        "--timing",
        choices=["poisson", "trace"],
        default="poisson",
        help="arrivals at the slice's mean rate (default), or at the trace's own times",
    )
    parser.add_argument("--offline-rate", type=float, default=2.0, help="offline requests/s")
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=150.0,
        help="how long to watch the pool scale down after the load (after the stabilization "
        "window it removes a step a minute)",
    )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    missing = missing_files(args.pool)
    if missing:
        print(
            "carpool demo runs from a checkout of the carpool repository (make demo); "
            f"not found: {', '.join(map(str, missing))}",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    state_dir = args.state_dir.resolve()
    controlplane.down(state_dir)  # a previous demo interrupted hard
    print(
        f"starting a local control plane, Prometheus and {args.gpu_nodes} "
        f"{args.gpus_per_node}-GPU process nodes ..."
    )
    try:
        state = controlplane.up(state_dir)
        prom_url = prometheus.start(state)
        kubelet.start_daemon(state, nodes=args.gpu_nodes, gpus_per_node=args.gpus_per_node)
        return _run(args, state, prom_url, stop)
    finally:
        print("tearing down ...")
        stopped = controlplane.down(state_dir)
        print(f"stopped {', '.join(stopped) or 'nothing'}; logs kept in {state_dir / 'logs'}")


def _run(args, state: controlplane.ClusterState, prom_url: str, stop: threading.Event) -> int:
    api = config.new_client_from_config(config_file=state.kubeconfig)
    scenario.install_crds(Path(state.kubectl), Path(state.kubeconfig))
    identity = scenario.operator_kubeconfig(api, state.server, state.ca_file, Path(state.state_dir))
    state.processes["operator"] = scenario.start_operator(
        identity, prom_url, Path(state.state_dir) / "logs" / "operator.log"
    )
    state.save()
    manifest = scenario.load_manifest(args.pool)
    name = manifest["metadata"]["name"]
    client.CoreV1Api(api).create_namespace({"metadata": {"name": NAMESPACE}})
    scenario.apply_pool(api, NAMESPACE, manifest, profile=args.profile)
    print(f"applied InferencePool {NAMESPACE}/{name}; waiting for its first worker ...")
    applied_at = time.monotonic()
    processes.wait_until(
        "the first worker to be ready",
        lambda: scenario.pool_snapshot(api, NAMESPACE, name)["ready"] >= 1,
        180,
        state.processes["operator"],
    )
    # What a new worker takes here, from the pool applied to the worker ready: the simulator's
    # start-up delay for its prediction of this run.
    startup_seconds = time.monotonic() - applied_at

    endpoints = {e["name"]: e for e in manifest["spec"]["endpoints"]}
    interactive = next(n for n, e in endpoints.items() if e.get("sla"))
    offline = next(n for n, e in endpoints.items() if not e.get("sla"))
    sla = endpoints[interactive]["sla"]["ttftP95Milliseconds"] / 1000
    total = args.base_seconds + args.burst_seconds + args.after_seconds
    burst = (args.base_seconds, args.base_seconds + args.burst_seconds)
    schedule = load.schedule_from_trace(
        trace_path(),
        interactive,
        start_seconds=args.trace_start_seconds,
        duration_seconds=total,
        rate_multiplier=args.rate,
        timing=args.timing,
        burst=(*burst, args.burst_factor),
        token_divisor=1.0,
        max_prompt_tokens=DEMO_MAX_PROMPT_TOKENS,
        max_output_tokens=DEMO_MAX_OUTPUT_TOKENS,
    )
    schedule += load.poisson(offline, args.offline_rate, total, prompt_tokens=1024, max_tokens=128)
    schedule.sort(key=lambda a: a.at_seconds)
    timeline = Timeline(
        interactive=interactive, offline=offline, sla_seconds=sla, burst=burst, load_seconds=total
    )
    selector = f"carpool.dev/pool={name}"
    port = int((manifest["spec"].get("worker") or {}).get("port") or 8000)
    print(
        f"replaying {len(schedule)} requests over {total:.0f}s "
        f"(burst x{args.burst_factor:g} from {burst[0]:.0f}s to {burst[1]:.0f}s) ..."
    )
    with load.PodDirectory(api, NAMESPACE, selector, port) as directory:
        sampler = threading.Thread(
            target=timeline.sample_until, args=(api, NAMESPACE, name, stop), daemon=True
        )
        sampler.start()
        replay = threading.Thread(
            target=lambda: timeline.add_outcomes(
                load.replay(schedule, directory, total + 30, on_outcome=timeline.add_outcome)
            ),
            daemon=True,
        )
        replay.start()
        render_live(timeline, lambda: replay.is_alive() and not stop.is_set())
        drain_until = time.monotonic() + args.drain_seconds
        print(f"load done; watching the pool scale down for up to {args.drain_seconds:.0f}s ...")
        render_live(
            timeline,
            lambda: (
                time.monotonic() < drain_until
                and not stop.is_set()
                and timeline.latest_desired() > 1
            ),
        )
        stop.set()
        sampler.join(timeout=5)
    timeline.events = scenario.pool_events(api, NAMESPACE, name)
    summary = timeline.summary()
    summary["simulator"] = _prediction(args, manifest, schedule, timeline, startup_seconds, total)
    summary_table(summary)
    write_png(timeline, args.out / "timeline.png")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"timeline: {args.out / 'timeline.png'}  summary: {args.out / 'summary.json'}")
    return 0


def _prediction(args, manifest, schedule, timeline: Timeline, startup_seconds: float, total):
    """`carpool sim` on the same arrivals, pool and profile, beside what this run measured."""
    profile = Profile.from_dict(json.loads((scenario.PROFILES / args.profile).read_text()))
    # A scaled-up pod's start-up as this run showed it; the first pod's when it never scaled.
    shown = loop.startup_seconds([(s["t"], s["desired"], s["ready"]) for s in timeline.samples])
    startup_seconds = shown or startup_seconds
    predicted = loop.predict(
        schedule,
        manifest["spec"],
        profile,
        startup_seconds=startup_seconds,
        scrape_interval_seconds=prometheus.scrape_interval_seconds(),
        rate_window_seconds=scenario.RATE_WINDOW_SECONDS,
        until_seconds=total,
    )
    samples = [(s["t"], s["desired"]) for s in timeline.samples]
    real = loop.measured(timeline.outcomes, samples, total)
    return {
        "predicted": predicted,
        "measured": real,
        "ratio": loop.ratios(predicted, real),
        "startup_seconds": round(startup_seconds, 1),
    }
