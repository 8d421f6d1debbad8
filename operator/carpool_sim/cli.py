"""`carpool sim`: replay traces through carpool's policy and the baselines, side by side.

Contract: `main(argv) -> int`. Exit 0 after printing the comparison (a rich table, or with
`--json` one JSON document on stdout: `{"scenario": {...}, "policies": {name: summary}}`, see
`carpool_sim.report`); exit 2 with a one-line message on stderr for bad arguments or files.
Progress goes to stderr, and only when stderr is a terminal.
`carpool sim suite ...` is the benchmark suite instead (`carpool_sim.suite`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from carpool_sim import suite
from carpool_sim.compare import POLICIES, Options, resolve, run_policies
from carpool_sim.plots import plot_runs
from carpool_sim.pool import LEAST_REQUEST, ROUTINGS
from carpool_sim.report import summarize, table
from carpool_sim.scenario import ScenarioError, build_scenario
from carpool_sim.sim import SimConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="carpool sim",
        description="Replay request traces through carpool's scaling policy and the baselines "
        "(HPA on GPU utilization, KEDA on queue length, Knative KPA, static peak provisioning) "
        "on a simulated pool of continuous-batching replicas.",
        epilog="carpool sim suite --help: every scenario of a folder, every policy, one table.",
    )
    p.add_argument("--pool", required=True, help="InferencePool manifest (YAML)")
    p.add_argument(
        "--trace",
        action="append",
        required=True,
        metavar="ENDPOINT=SOURCE",
        help="an endpoint's traffic: an Azure-format CSV path, or a pattern such as "
        "poisson:rate=2,prompt=1024,output=256 (also diurnal:..., bursts:...); repeatable",
    )
    p.add_argument("--profile", required=True, help="worker profile JSON (carpool profile)")
    p.add_argument(
        "--policy",
        default=",".join(POLICIES),
        help=f"comma-separated policies to compare (default: {','.join(POLICIES)})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for synthetic patterns")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument(
        "--rate-scale",
        type=float,
        default=1.0,
        help="compress recorded traces' time axis by this factor (2 = twice the load)",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        help="run length in seconds; recorded traces are looped or cut to it "
        "(default: the longest recorded trace after --rate-scale)",
    )
    p.add_argument("--plot", metavar="DIR", help="write replicas-ttft.png into DIR")
    p.add_argument("--gpu-hour-price", type=float, default=3.0, help="USD per GPU-hour")
    p.add_argument("--startup-seconds", type=float, default=60.0, help="pod start-up delay")
    p.add_argument("--scrape-interval", type=float, default=15.0, help="Prometheus, seconds")
    p.add_argument(
        "--routing",
        choices=ROUTINGS,
        default=LEAST_REQUEST,
        help="how requests reach the pods: a least-request gateway (default) or the pool's "
        "Service, which picks a ready pod at random (drawn from --seed)",
    )
    p.add_argument(
        "--sla-target",
        type=float,
        default=0.99,
        help="attainment that static peak provisioning is sized for",
    )
    p.add_argument(
        "--static-replicas",
        type=int,
        default=None,
        help="replicas for the static policy (default: the fewest that reach --sla-target)",
    )
    p.add_argument(
        "--initial-replicas",
        type=int,
        default=None,
        help="replicas every policy starts with (default: the static peak count, a warm pool)",
    )
    p.add_argument(
        "--keda-queue-threshold",
        type=float,
        default=10.0,
        help="KEDA's AverageValue target: waiting requests per replica",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["suite"]:
        return suite.main(argv[1:])
    args = parser().parse_args(argv)
    names = [n.strip() for n in args.policy.split(",") if n.strip()]
    unknown = [n for n in names if n not in POLICIES]
    err = Console(stderr=True)
    if unknown or not names:
        err.print(f"carpool sim: unknown policy {', '.join(unknown) or '(none)'}; "
                  f"use {', '.join(POLICIES)}", markup=False)  # fmt: skip
        return 2
    try:
        scenario = build_scenario(
            args.pool, args.profile, args.trace, args.rate_scale, args.duration, args.seed
        )
    except ScenarioError as error:
        err.print(f"carpool sim: {error}", markup=False)
        return 2
    config = SimConfig(
        startup_seconds=args.startup_seconds,
        scrape_interval_seconds=args.scrape_interval,
        routing=args.routing,
        routing_seed=args.seed,
    )
    options = Options(
        config=config,
        sla_target=args.sla_target,
        static_replicas=args.static_replicas,
        keda_queue_threshold=args.keda_queue_threshold,
        initial_replicas=args.initial_replicas,
    )
    # Size the static pool once, up front, so the progress bar covers the real runs.
    options = resolve(scenario, options)

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("simulating", total=len(names) * scenario.duration_seconds)
        done = {n: 0.0 for n in names}

        def tick(name: str, now: float) -> None:
            done[name] = min(now, scenario.duration_seconds)
            progress.update(task, completed=sum(done.values()), description=name)

        results = run_policies(scenario, names, options, tick)

    summaries = {r.policy: summarize(r, scenario.spec, args.gpu_hour_price) for r in results}
    header = {
        "requests": len(scenario.requests),
        "duration_seconds": scenario.duration_seconds,
        "rate_scale": args.rate_scale,
        "seed": args.seed,
        "profile": {"model": scenario.profile.model, "device": scenario.profile.device},
        "static_replicas": options.static_replicas,
        "initial_replicas": options.initial_replicas,
        "startup_seconds": config.startup_seconds,
        "scrape_interval_seconds": config.scrape_interval_seconds,
        "routing": config.routing,
        "gpu_hour_price": args.gpu_hour_price,
    }
    if args.plot:
        path = plot_runs(results, scenario.spec, Path(args.plot) / "replicas-ttft.png")
        header["plot"] = str(path)
    if args.json:
        print(json.dumps({"scenario": header, "policies": summaries}, indent=2))
    else:
        out = Console(width=None if Console().is_terminal else 160)
        title = (
            f"{len(scenario.requests)} requests over {scenario.duration_seconds / 60:.0f} min, "
            f"rate scale {args.rate_scale:g}, static = {options.static_replicas} replicas, "
            f"{config.routing} routing"
        )
        out.print(table(summaries, title))
        if args.plot:
            out.print(f"plot: {header['plot']}")
    return 0
