"""`carpool sim suite`: every scenario of a folder, every policy, one table.

Contract: `main(argv) -> int`:

```
carpool sim suite [--scenarios DIR] [--short] [--json OUT] [--markdown OUT]
                  [--processes N] [--only NAME[,NAME...]] [--seeds N]
                  [--routing least-request|random]
```

runs each scenario file of DIR (`carpool_sim.suite_scenario`, default `scenarios/`) at each of
its rate scales (a *variant*), prints one table and exits 0; exit 2 with a one-line message for
a folder or file it cannot use. `--short` runs every scenario at its first rate scale only, for
at most `SHORT_SECONDS` of traffic: the suite's check in `make test`, not a result. Variants
run in parallel on `--processes` processes (default 2). `--seeds N` runs every variant on N
sample paths of its traffic (the file's seed, then the next N - 1; a recorded trace is the same
on each, its synthetic streams and envelope draws are not) and adds a table of the spread.
`--routing` is how requests reach the pods in every run (`carpool_sim.pool`): `least-request`
(a gateway, the default) or `random` (the pool's own Service, as the operator deploys it).

`run_variant(path, rate_scale, short, seed=None, routing=LEAST_REQUEST)` is one variant on one
sample path (the file's seed when None), and deterministic (no clock reads; its `seconds`
field, the CPU time it took, is the one exception and is not part of the result).
Each variant reports, for its policies:
- `hpa-gpu`, `keda-queue`, `kpa`: at their documented defaults, and tuned (`carpool_sim.tuning`:
  the cheapest swept setting that reaches the target);
- `static`: the fewest replicas that reach the target, held all run (found by simulated runs:
  up a ladder of counts, then bisection; `static_runs` says which counts reached it);
- `clairvoyant`: the bound of `carpool_sim.clairvoyant`;
- `carpool`: `carpool_policy.decide()`.
A policy *reaches* the target when every endpoint with requests attains at least its target:
`sla_target` (0.99) of the requests that any replica count could serve in time (the rest, too
long for the context or whose prefill alone breaks the TTFT budget, are misses for every
policy). Every autoscaler starts from the static count (a warm pool, as `carpool sim` does).
The variant's `cheapest` is the cheapest of the baselines (default, tuned, static) that reaches
the target, and carpool's ratios are its GPU-hours over that, over the clairvoyant bound and
over static.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from carpool_sim import clairvoyant, suite_report
from carpool_sim.controllers import Bounds, Carpool, Controller, Static
from carpool_sim.pool import LEAST_REQUEST, ROUTINGS
from carpool_sim.report import attained_mask
from carpool_sim.scenario import Scenario, ScenarioError
from carpool_sim.sim import RunResult, SimConfig, simulate
from carpool_sim.suite_scenario import ScenarioFile, load_folder, load_scenario_file
from carpool_sim.tuning import SWEEPS, Sweep, cheapest, sweep

SHORT_SECONDS = 300.0
BASELINES = ("hpa-gpu", "keda-queue", "kpa")


@dataclass
class Row:
    policy: str
    kind: str  # default, tuned, hindsight, bound, policy
    setting: str
    gpu_hours: float
    attainment: dict[str, float | None]
    reached: bool
    margin: float  # the worst endpoint's attainment minus its target
    resolved: bool  # every request served or turned away by the run's end
    mean_replicas: float
    peak_replicas: int
    scale_events: int

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Variant:
    """One scenario at one rate scale: its requests, targets and runs."""

    def __init__(
        self,
        file: ScenarioFile,
        rate_scale: float,
        short: bool,
        seed: int | None = None,
        routing: str = LEAST_REQUEST,
    ):
        duration = min(file.duration_seconds, SHORT_SECONDS) if short else None
        self.file, self.rate_scale, self.short = file, rate_scale, short
        self.seed = file.seed if seed is None else seed
        self.scenario: Scenario = file.build(rate_scale, duration, self.seed)
        if not self.scenario.requests:
            raise ScenarioError(f"{file.path}: the traffic holds no requests")
        # A random routing draws from the sample path's seed, as its traffic does.
        self.config = SimConfig(routing=routing, routing_seed=self.seed)
        spec = self.scenario.spec
        self.names = [e.name for e in spec.endpoints]
        endpoint_of = np.array([r.endpoint for r in self.scenario.requests])
        self.masks = {n: endpoint_of == n for n in self.names}
        self.counts = np.array([int(self.masks[n].sum()) for n in self.names])
        ok = clairvoyant.reachable(self.scenario)
        self.reachable = {
            n: float(ok[self.masks[n]].mean()) if self.counts[i] else None
            for i, n in enumerate(self.names)
        }
        self.targets = np.array([file.sla_target * (self.reachable[n] or 1.0) for n in self.names])
        # Static runs by replica count: their row and misses by minute, not the run itself
        # (a run holds every pod and request; a dozen of them slow the garbage collector).
        self.statics: dict[int, tuple[Row, np.ndarray]] = {}

    def bounds(self, initial: int) -> Bounds:
        spec = self.scenario.spec
        bounds = Bounds(max(1, spec.min_replicas), spec.max_replicas)
        bounds.initial = bounds.clamp(initial)
        return bounds

    def simulate(self, controller: Controller) -> RunResult:
        s = self.scenario
        return simulate(s.requests, s.spec, s.profile, controller, self.config)

    def row(self, result: RunResult, policy: str, kind: str, setting: str) -> Row:
        attained = attained_mask(result, self.scenario.spec)
        attainment: dict[str, float | None] = {}
        margins = []
        for i, name in enumerate(self.names):
            if not self.counts[i]:
                attainment[name] = None
                continue
            share = float(attained[self.masks[name]].mean())
            attainment[name] = share
            margins.append(share - self.targets[i])
        replicas = [desired for _, desired, _ in result.timeline]
        margin = float(min(margins))
        return Row(
            policy=policy,
            kind=kind,
            setting=setting,
            gpu_hours=result.gpu_seconds / 3600.0,
            attainment=attainment,
            reached=margin >= -1e-12,
            margin=margin,
            resolved=result.recorder.resolved == len(self.scenario.requests),
            mean_replicas=float(np.mean(replicas)) if replicas else 0.0,
            peak_replicas=max(replicas, default=0),
            scale_events=result.scale_events,
        )

    def static(self, n: int) -> tuple[Row, np.ndarray]:
        if n not in self.statics:
            result = self.simulate(Static(n))
            minutes = clairvoyant.minutes_of(self.scenario)
            self.statics[n] = (
                self.row(result, "static", "hindsight", f"{n} replicas"),
                clairvoyant.minute_misses(result, self.scenario, minutes),
            )
        return self.statics[n]

    def reaches(self, n: int) -> bool:
        return self.static(n)[0].reached

    def static_count(self) -> int:
        """The fewest replicas that reach the target (attainment grows with replicas): climb
        the ladder to the first count that reaches it, then bisect the rung below."""
        spec = self.scenario.spec
        low = max(1, spec.min_replicas)
        for high in [n for n in ladder(spec.max_replicas) if n >= low]:
            if self.reaches(high):
                break
            low = high + 1
        else:
            return spec.max_replicas  # none reaches it: the most the pool allows
        while low < high:
            mid = (low + high) // 2
            if self.reaches(mid):
                high = mid
            else:
                low = mid + 1
        return high


def ladder(top: int) -> list[int]:
    """Replica counts the static search climbs and the clairvoyant search steps down: 1, 2, 3,
    4, 6, 8, then about a third apart, up to `top`."""
    out = [n for n in (1, 2, 3, 4, 6) if n < top]
    n = 8.0
    while n < top:
        out.append(round(n))
        n *= 4.0 / 3.0
    return sorted(set(out) | {top})


def run_variant(
    path: str, rate_scale: float, short: bool, seed: int | None = None, routing: str = LEAST_REQUEST
) -> dict[str, Any]:
    started = time.process_time()
    variant = Variant(load_scenario_file(path), rate_scale, short, seed, routing)
    count = variant.static_count()
    rows: list[Row] = []
    sweeps: dict[str, list[dict[str, Any]]] = {}
    for name in BASELINES:
        knob = SWEEPS[name]

        def run(value: float, knob: Sweep = knob, name: str = name) -> Row:
            result = variant.simulate(knob.controller(variant.bounds(count), value))
            return variant.row(result, name, "tuned", knob.label(value))

        tried = sweep(knob.values, knob.default, run)
        rows.append(replace(tried[0][1], kind="default"))
        rows.append(cheapest([r for _, r in sorted(tried)]))
        sweeps[name] = [r.as_dict() for _, r in sorted(tried)]
    static = variant.static(count)[0]
    rows.append(static)
    bound = clairvoyant.search(
        variant.scenario,
        variant.config,
        lambda n: variant.static(n)[1],
        count,
        static.gpu_hours * 3600.0,
        variant.targets,
        sorted(set(ladder(count)) | {n for n in variant.statics if n <= count}),
        variant.scenario.spec.max_replicas,
        rounds=2 if short else 4,
    )
    if bound.result is None:
        rows.append(replace(static, policy="clairvoyant", kind="bound",
                            setting=f"static {count}: no schedule passed"))  # fmt: skip
    else:
        schedule = f"per minute, mean {np.mean(bound.schedule):.1f}"
        rows.append(variant.row(bound.result, "clairvoyant", "bound", schedule))
    carpool = Carpool(variant.scenario.spec, variant.scenario.profile, variant.bounds(count))
    rows.append(variant.row(variant.simulate(carpool), "carpool", "policy", "decide()"))
    return _document(variant, count, rows, sweeps, bound, time.process_time() - started)


def _document(
    variant: Variant,
    count: int,
    rows: list[Row],
    sweeps: dict[str, list[dict[str, Any]]],
    bound: clairvoyant.Bound,
    seconds: float,
) -> dict[str, Any]:
    scenario, file = variant.scenario, variant.file
    by_kind = {(r.policy, r.kind): r for r in rows}
    carpool, static = by_kind["carpool", "policy"], by_kind["static", "hindsight"]
    bound_row = by_kind["clairvoyant", "bound"]
    baselines = [r for r in rows if r.kind in ("default", "tuned", "hindsight")]
    reaching = [r for r in baselines if r.reached]
    # On a tie, name static: a baseline that costs exactly static's never scaled.
    best = min(reaching, key=lambda r: (r.gpu_hours, r.kind != "hindsight"), default=None)
    return {
        "scenario": file.name,
        "description": file.description,
        "rate_scale": variant.rate_scale,
        "seed": variant.seed,
        "file_seed": file.seed,
        "routing": variant.config.routing,
        "short": variant.short,
        "duration_seconds": scenario.duration_seconds,
        "profile": {
            "model": scenario.profile.model,
            "device": scenario.profile.device,
            "max_seq_len": scenario.profile.max_seq_len,
        },
        "requests": dict(zip(variant.names, map(int, variant.counts), strict=True)),
        "sla_seconds": {e.name: e.ttft_p95_seconds for e in scenario.spec.endpoints},
        "reachable": variant.reachable,
        "targets": dict(zip(variant.names, map(float, variant.targets), strict=True)),
        "static_replicas": count,
        "static_runs": {
            str(n): {"gpu_hours": row.gpu_hours, "reached": row.reached}
            for n, (row, _) in sorted(variant.statics.items())
        },
        "goal_vs_static": file.goal_vs_static,
        "rows": [r.as_dict() for r in rows],
        "sweeps": sweeps,
        "clairvoyant": {
            "planned": bound.planned,
            "rounds": bound.rounds,
            "schedule": bound.schedule,
        },
        "cheapest": None if best is None else {k: getattr(best, k) for k in
                                               ("policy", "kind", "setting", "gpu_hours")},
        "carpool": {
            "reached": carpool.reached,
            "vs_cheapest": _ratio(carpool.gpu_hours, best.gpu_hours if best else None),
            "vs_clairvoyant": _ratio(carpool.gpu_hours, bound_row.gpu_hours),
            "vs_static": _ratio(carpool.gpu_hours, static.gpu_hours),
        },
        "seconds": seconds,
    }  # fmt: skip


def _ratio(a: float, b: float | None) -> float | None:
    return None if b is None or b <= 0 else a / b


Task = tuple[str, float, bool, int, str]  # scenario file, rate scale, short, seed, routing


def _run(task: Task) -> dict[str, Any]:
    return run_variant(*task)


def run_suite(
    files: list[ScenarioFile],
    short: bool,
    processes: int,
    done: Callable[[dict[str, Any]], None] | None = None,
    seeds: int = 1,
    routing: str = LEAST_REQUEST,
) -> list[dict[str, Any]]:
    """Every variant of `files` on `seeds` sample paths, in file, rate and seed order; the
    longest run first, so two processes finish together."""
    tasks = [
        (str(f.path), scale, short, f.seed + k, routing)
        for f in files
        for scale in (f.rate_scales[:1] if short else f.rate_scales)
        for k in range(seeds)
    ]
    order = {task: i for i, task in enumerate(tasks)}
    work = {task: _work(files, task) for task in tasks}
    tasks.sort(key=lambda t: -work[t])
    results: list[tuple[int, dict[str, Any]]] = []
    if processes <= 1:
        for task in tasks:
            results.append((order[task], _run(task)))
            if done is not None:
                done(results[-1][1])
    else:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            for task, result in zip(tasks, pool.imap(_run, tasks), strict=True):
                results.append((order[task], result))
                if done is not None:
                    done(result)
    return [r for _, r in sorted(results, key=lambda x: x[0])]


def _work(files: list[ScenarioFile], task: Task) -> float:
    """A cost estimate: traffic seconds times the rate scale times the endpoints."""
    file = next(f for f in files if str(f.path) == task[0])
    seconds = min(file.duration_seconds, SHORT_SECONDS) if task[2] else file.duration_seconds
    return seconds * task[1] * len(file.traffic)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="carpool sim suite",
        description="Run every scenario of a folder through carpool's policy, the baselines "
        "at their defaults and tuned, static sized in hindsight and the clairvoyant bound; "
        "print one table.",
    )
    p.add_argument("--scenarios", default="scenarios", help="folder of scenario YAML files")
    p.add_argument(
        "--short",
        action="store_true",
        help=f"every scenario at its first rate scale, for at most {SHORT_SECONDS:.0f} s",
    )
    p.add_argument("--json", metavar="OUT", help="write every variant's document to OUT")
    p.add_argument("--markdown", metavar="OUT", help="write the table as Markdown to OUT")
    p.add_argument("--processes", type=int, default=2, help="variants run at once (default 2)")
    p.add_argument("--only", help="comma-separated scenario names to run")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="sample paths per variant: the file's seed and the next ones (default 1)",
    )
    p.add_argument(
        "--routing",
        choices=ROUTINGS,
        default=LEAST_REQUEST,
        help="how requests reach the pods: a least-request gateway (default) or the pool's "
        "Service, which picks a ready pod at random",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    err = Console(stderr=True)
    try:
        files = load_folder(args.scenarios)
        if args.only:
            wanted = {n.strip() for n in args.only.split(",") if n.strip()}
            missing = wanted - {f.name for f in files}
            if missing:
                raise ScenarioError(f"--only: no scenario named {', '.join(sorted(missing))}")
            files = [f for f in files if f.name in wanted]
        if args.processes < 1:
            raise ScenarioError("--processes: expected at least 1")
        if args.seeds < 1:
            raise ScenarioError("--seeds: expected at least 1")
    except ScenarioError as error:
        err.print(f"carpool sim suite: {error}", markup=False)
        return 2

    def done(result: dict[str, Any]) -> None:
        err.print(f"{suite_report.variant_label(result)}: "
                  f"{result['seconds']:.0f} s CPU", markup=False)  # fmt: skip

    results = run_suite(files, args.short, args.processes, done, args.seeds, args.routing)
    out = Console(width=None if Console().is_terminal else 200)
    out.print(suite_report.table(results))
    out.print(suite_report.summary_table(results))
    if args.seeds > 1:
        out.print(suite_report.spread_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(suite_report.markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
