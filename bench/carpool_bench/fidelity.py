"""``carpool fidelity``: the simulator's prediction of one worker against the worker itself, on
the same arrivals and the same profile.

Contract: ``main(argv) -> int``. Against ``--url`` (a running worker, real or emulated), or an
emulated worker it starts itself from ``--profile``:
1. saturation: a burst of ``--saturation-requests`` requests sent at once, sized like the trace;
   completed requests per second over the burst's makespan, measured (and simulated beside it);
2. for each fraction in ``--loads`` of the measured saturation: Poisson arrivals at that rate for
   ``--duration`` seconds with the trace's token mix (prompts capped at ``--max-prompt-tokens``),
   replayed against the worker and simulated (one replica, the worker's default limits: one
   endpoint, ``default``), on the same arrivals;
3. one JSON line per load: measured and simulated TTFT p50/p95/p99 as clients saw it (the
   simulator models the worker from the moment a request reaches its engine, so HTTP and client
   time is the gap here), TTFT p50/p95 and queue-wait p95 from the worker's own histograms as
   Prometheus reads them (the operator's view; the simulator records the same histograms),
   throughput (requests and generated tokens per second over the makespan), and the simulated /
   measured ratios.
Exit status 2 on a bad argument or a worker that does not come up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from carpool_bench.replay import Arrival, Fixed, http_url, replay, wait_ready
from carpool_policy import PoolSpec
from carpool_replica.buckets import LATENCY_BUCKETS, histogram_quantile
from carpool_replica.limits import default_limits
from carpool_replica.profile import Profile
from carpool_sim.controllers import Static
from carpool_sim.sim import SimConfig, simulate
from carpool_sim.trace import Request, TraceError, load_azure_csv, poisson_mix

ENDPOINT = "default"
PRESETS = ("tiny", "bench-1b", "bench-8b")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carpool fidelity", description=__doc__.splitlines()[0])
    p.add_argument("--profile", type=Path, required=True, help="the worker's profile JSON")
    p.add_argument("--url", help="a running worker (default: start an emulated one)")
    p.add_argument("--trace", type=Path, default=Path("traces/azure-llm-2023-code.csv"))
    p.add_argument("--max-prompt-tokens", type=int, default=8000)
    p.add_argument("--loads", default="0.25,0.5,0.75", help="fractions of saturation")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per load")
    p.add_argument("--saturation-requests", type=int, default=200)
    p.add_argument("--saturation", type=float, help="requests/s (default: measured)")
    p.add_argument("--seed", type=int, default=0)
    return p


def sim_spec(profile: Profile) -> PoolSpec:
    """One endpoint with the limits a worker runs without a limits file."""
    limits = default_limits(profile.max_batch_size).endpoints[ENDPOINT]
    return PoolSpec.from_crd(
        {
            "replicas": {"min": 1, "max": 1},
            "endpoints": [
                {
                    "name": ENDPOINT,
                    "priority": limits.priority,
                    "batching": {
                        "maxBatchSize": {"min": 1, "max": limits.max_batch_size},
                        "batchWindowMilliseconds": {
                            "min": limits.batch_window_ms,
                            "max": limits.batch_window_ms,
                        },
                    },
                    "queue": {
                        "maxWaitMilliseconds": limits.max_queue_wait_ms,
                        "maxLength": limits.max_queue_length,
                    },
                }
            ],
        }
    )


def simulated(requests: list[Request], profile: Profile) -> dict:
    result = simulate(
        requests, sim_spec(profile), profile, Static(1), SimConfig(startup_seconds=0.0)
    )
    rec = result.recorder
    done = ~np.isnan(rec.finished_at)
    outputs = np.array([r.output_tokens for r in requests], dtype=float)
    series = rec.series[ENDPOINT]
    return _figures(
        ttfts=rec.ttft[~np.isnan(rec.ttft)],
        histograms={"queue_wait": list(series.queue_wait.counts), "ttft": list(series.ttft.counts)},
        finished_at=rec.finished_at[done],
        generated=float(outputs[done].sum()),
    )


def measured(url: str, requests: list[Request], deadline: float) -> dict:
    arrivals = [Arrival(r.arrival_seconds, ENDPOINT, r.prompt_tokens, r.output_tokens)
                for r in requests]  # fmt: skip
    before = worker_histograms(url)
    outcomes = [o for o in replay(arrivals, Fixed(url), deadline) if o.status == 200]
    after = worker_histograms(url)
    return _figures(
        ttfts=np.array([o.ttft_seconds for o in outcomes if o.ttft_seconds is not None]),
        histograms={
            name: [b - a for a, b in zip(before[name], after[name], strict=True)] for name in before
        },
        finished_at=np.array([o.finished_at for o in outcomes]),
        generated=float(sum(o.arrival.max_tokens for o in outcomes)),
        failed=len(arrivals) - len(outcomes),
    )


def _figures(ttfts, histograms, finished_at, generated, failed=0) -> dict:
    makespan = float(finished_at.max()) if len(finished_at) else math.nan

    def pct(q: float) -> float | None:
        return round(float(np.percentile(ttfts, q)), 4) if len(ttfts) else None

    def from_histogram(name: str, q: float) -> float | None:
        value = histogram_quantile(q, histograms[name])
        return None if value is None else round(value, 4)

    return {
        "completed": int(len(finished_at)),
        "failed": failed,
        "ttft_p50_seconds": pct(50),
        "ttft_p95_seconds": pct(95),
        "ttft_p99_seconds": pct(99),
        "worker_ttft_p50_seconds": from_histogram("ttft", 0.50),
        "worker_ttft_p95_seconds": from_histogram("ttft", 0.95),
        "queue_wait_p95_seconds": from_histogram("queue_wait", 0.95),
        "requests_per_second": round(len(finished_at) / makespan, 3) if makespan > 0 else None,
        "tokens_per_second": round(generated / makespan, 1) if makespan > 0 else None,
    }


HISTOGRAMS = {
    "queue_wait": "carpool_queue_wait_seconds",
    "ttft": "carpool_time_to_first_token_seconds",
}


def worker_histograms(url: str) -> dict[str, list[float]]:
    """The worker's queue-wait and TTFT histograms for the endpoint, per bucket (+Inf last)."""
    text = httpx.get(f"{http_url(url)}/metrics", timeout=10).text
    cumulative: dict[str, dict[float, float]] = {name: {} for name in HISTOGRAMS}
    families = {family: name for name, family in HISTOGRAMS.items()}
    for family in text_string_to_metric_families(text):
        if family.name not in families:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("endpoint") == ENDPOINT:
                cumulative[families[family.name]][float(sample.labels["le"])] = sample.value
    bounds = [*LATENCY_BUCKETS, math.inf]
    out = {}
    for name, by_bound in cumulative.items():
        running = [by_bound.get(b, 0.0) for b in bounds]
        out[name] = [running[0]] + [b - a for a, b in zip(running, running[1:], strict=False)]
    return out


def ratios(sim: dict, real: dict) -> dict:
    out = {}
    for key, value in sim.items():
        if key.endswith(("_seconds", "_per_second")) and value and real.get(key):
            out[key] = round(value / real[key], 3)
    return out


def burst(trace: list[Request], count: int, max_prompt: int, rng) -> list[Request]:
    picks = rng.integers(0, len(trace), count)
    return [Request(ENDPOINT, 0.0, min(max_prompt, trace[i].prompt_tokens),
                    trace[i].output_tokens) for i in picks]  # fmt: skip


@contextlib.contextmanager
def emulated_worker(profile_path: Path, profile: Profile):
    """Starts ``carpool worker --emulate`` on a free loopback port; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = profile.model if profile.model in PRESETS else "bench-1b"
    command = [sys.executable, "-m", "carpool_cli.main", "worker", "--emulate", str(profile_path),
               "--model", model, "--max-batch-size", str(profile.max_batch_size),
               "--port", str(port), "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def saturation(url: str, requests: list[Request], profile: Profile) -> tuple[float, float]:
    """(measured, simulated) completed requests per second of a burst sent at once."""
    real = measured(url, requests, deadline=600.0)
    sim = simulated(requests, profile)
    return real["requests_per_second"], sim["requests_per_second"]


def run(args, url: str, profile: Profile, trace: list[Request]) -> None:
    rng = np.random.default_rng(args.seed)
    sat_requests = burst(trace, args.saturation_requests, args.max_prompt_tokens, rng)
    if args.saturation:
        sat, sat_sim = args.saturation, None
    else:
        sat, sat_sim = saturation(url, sat_requests, profile)
    head = {"saturation_rps": sat, "simulated_saturation_rps": sat_sim,
            "profile": f"{profile.model} on {profile.device}"}  # fmt: skip
    print(json.dumps(head), flush=True)
    for i, fraction in enumerate(float(f) for f in args.loads.split(",")):
        rate = fraction * sat
        requests = poisson_mix(
            trace, rate, args.duration, np.random.default_rng(args.seed + 1 + i),
            args.max_prompt_tokens,
        )  # fmt: skip
        real = measured(url, requests, deadline=args.duration + 300.0)
        sim = simulated(requests, profile)
        line = {"load": fraction, "rate_rps": round(rate, 3), "requests": len(requests),
                "measured": real, "simulated": sim,
                "ratio_simulated_to_measured": ratios(sim, real)}  # fmt: skip
        print(json.dumps(line), flush=True)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        profile = Profile.from_dict(json.loads(args.profile.read_text()))
        trace = load_azure_csv(args.trace, ENDPOINT)
    except (OSError, ValueError, TraceError) as error:
        print(f"carpool fidelity: {error}", file=sys.stderr)
        return 2
    try:
        if args.url:
            wait_ready(args.url)  # a GPU worker can take minutes to load and capture
            run(args, args.url, profile, trace)
        else:
            with emulated_worker(args.profile, profile) as url:
                run(args, url, profile, trace)
    except RuntimeError as error:
        print(f"carpool fidelity: {error}", file=sys.stderr)
        return 2
    return 0
