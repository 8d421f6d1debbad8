"""``carpool bench serve``: a serving benchmark, the trace's token mix at a sweep of Poisson rates
against a running worker, and the capacity at a TTFT SLA.

Contract: ``main(argv) -> int``. For each rate of ``--rates`` (requests per second, swept in
ascending order) it replays, against ``--url``, Poisson arrivals for ``--seconds`` seconds, at
most ``--requests`` of them, each sized like a request drawn from the Azure CSV ``--trace``
(prompt capped at ``--max-prompt-tokens``, output length as recorded). The arrivals of one rate
come from :func:`token_mix`, a function of the trace, the rate, the bounds and ``--seed`` alone,
so another server (``bench/hf_serve_peer.py``) gets the same requests. Each rate waits at most
``--drain-seconds`` after its last arrival; a request not done by then is *unfinished*.

Per rate (:func:`rate_figures`) it prints one table row and, with ``--json PATH``, writes the same
figures:

- the offered rate (the rate asked for, and the requests sent) and the achieved rate (requests
  completed with status 200 per second, over the makespan: from the first send to the last
  completion or send, or to the deadline when some request was unfinished);
- TTFT p50/p95/p99 as the client saw it (send to first streamed chunk), nearest-rank percentiles
  over *every request sent*: one that got no first token (an error, a 429, unfinished) counts as
  infinitely late, so a rate that drops more than 5% of its requests has an infinite p95 (printed
  ``inf``, ``null`` in JSON);
- inter-token latency p95: over completed requests of two tokens or more, each request's mean
  gap between output tokens (first to last streamed token over the tokens after the first; a
  worker may stream several tokens in one chunk, so the gaps between chunks are not the gaps
  between tokens);
- output tokens per second (the worker's usage count) over the makespan;
- goodput: completed requests with TTFT within ``--sla-ttft-ms`` per second of the makespan;
- 429s, other errors (any other status, or a broken connection; counted by status in the JSON),
  and unfinished requests.

Then the capacity at the SLA (:func:`capacity`): the highest rate that kept p95 TTFT within the
SLA, it and every lower rate; "at least" that when the highest rate swept passed, "below" the
lowest when even that missed. ``--stop-after-miss`` skips the rates above the first miss. Exit
status 2 on a bad argument, an unreadable trace or a worker that is not ready within
``--ready-seconds``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from carpool_bench.replay import Arrival, Fixed, Outcome, replay, wait_ready
from carpool_sim.trace import Request, TraceError, load_azure_csv, poisson_mix

DEFAULT_TRACE = Path("traces/azure-llm-2023-code.csv")
DEFAULT_RATES = "1,2,4,8,16"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carpool bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="a running worker, http://HOST:PORT")
    add_workload_arguments(p, DEFAULT_TRACE, DEFAULT_RATES, requests=200)
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=120.0,
        help="after a rate's last arrival, before its requests count as unfinished",
    )
    p.add_argument("--endpoint", default="default", help="the X-Carpool-Endpoint header")
    p.add_argument(
        "--ready-seconds",
        type=float,
        default=600.0,
        help="wait this long for the worker's /readyz (a GPU worker loads for minutes)",
    )
    p.add_argument(
        "--stop-after-miss",
        action="store_true",
        help="skip the rates above the first that misses the SLA (they cannot move the capacity)",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p


def add_workload_arguments(
    p: argparse.ArgumentParser, trace: Path, rates: str, requests: int
) -> None:
    """The options that say which requests a sweep sends (``token_mix``) and its SLA: one
    definition, so ``carpool bench serve`` and its peer take the same ones and, given the same
    values, send the same requests."""
    p.add_argument("--trace", type=Path, default=trace, help="Azure LLM trace CSV")
    p.add_argument("--max-prompt-tokens", type=int, default=8192)
    p.add_argument("--rates", default=rates, help="requests/s, comma-separated")
    p.add_argument("--requests", type=int, default=requests, help="at most this many per rate")
    p.add_argument("--seconds", type=float, default=60.0, help="of arrivals per rate, at most")
    p.add_argument("--sla-ttft-ms", type=float, default=1000.0)
    p.add_argument("--seed", type=int, default=0)


def parse_rates(text: str) -> list[float]:
    try:
        rates = sorted({float(r) for r in text.split(",") if r.strip()})
    except ValueError as error:
        raise ValueError(f"--rates: {error}") from None
    if not rates or rates[0] <= 0:
        raise ValueError(f"--rates must be positive numbers, got {text!r}")
    return rates


def token_mix(
    trace: list[Request],
    rate: float,
    seconds: float,
    max_requests: int,
    seed: int,
    max_prompt_tokens: int,
) -> list[Request]:
    """One rate's arrivals: Poisson at ``rate`` for ``seconds``, sized like ``trace`` (prompts
    capped), the first ``max_requests`` of them. Deterministic for (seed, rate): the same rate
    gets the same requests whatever else is swept, here and in the transformers peer."""
    rng = np.random.default_rng([seed, round(rate * 1000)])
    return poisson_mix(trace, rate, seconds, rng, max_prompt_tokens)[:max_requests]


def nearest_rank(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile by nearest rank (an observed value; inf stays inf)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def generated(outcome: Outcome) -> int:
    """Tokens generated: the worker's usage count, else the streamed chunks."""
    if outcome.output_tokens is not None:
        return outcome.output_tokens
    return len(outcome.token_times)


def inter_token_seconds(outcome: Outcome) -> float | None:
    """The request's mean gap between output tokens: first to last token over the tokens after
    the first (a worker may stream several tokens in one chunk, so chunk gaps are not tokens')."""
    count = generated(outcome)
    if count < 2 or len(outcome.token_times) < 2:
        return None
    return (outcome.token_times[-1] - outcome.token_times[0]) / (count - 1)


def rate_figures(
    rate: float, sent: int, outcomes: list[Outcome], sla_seconds: float, deadline_seconds: float
) -> dict:
    """One rate's figures from the outcomes of the ``sent`` requests (those missing from
    ``outcomes`` were unfinished at the deadline)."""
    done = [o for o in outcomes if o.status == 200 and o.finished_at is not None]
    ttfts = [o.ttft_seconds for o in done if o.ttft_seconds is not None]
    late = sent - len(ttfts)  # no first token: infinitely late
    all_ttfts = ttfts + [math.inf] * late
    itls = [itl for o in done if (itl := inter_token_seconds(o)) is not None]
    starts = [o.sent_at for o in outcomes]
    ends = [o.finished_at for o in done]
    unfinished = sent - len(outcomes)
    # Until the last completion or send; a rate cut off by its deadline ran until the deadline.
    end = max([*ends, *starts, deadline_seconds if unfinished else -math.inf], default=0.0)
    makespan = end - min(starts, default=0.0) if ends else 0.0
    tokens = sum(generated(o) for o in done)
    good = sum(1 for t in ttfts if t <= sla_seconds)

    def seconds(value: float | None) -> float | None:
        return None if value is None or math.isinf(value) else round(value, 4)

    def per_second(count: float) -> float | None:
        return round(count / makespan, 3) if makespan > 0 else None

    return {
        "offered_rps": rate,
        "sent": sent,
        "completed": len(done),
        "achieved_rps": per_second(len(done)),
        "ttft_p50_seconds": seconds(nearest_rank(all_ttfts, 50)),
        "ttft_p95_seconds": seconds(nearest_rank(all_ttfts, 95)),
        "ttft_p99_seconds": seconds(nearest_rank(all_ttfts, 99)),
        "itl_p95_seconds": seconds(nearest_rank(itls, 95)),
        "output_tokens_per_second": per_second(tokens),
        "goodput_rps": per_second(good),
        "sla_ttft_seconds": sla_seconds,
        "status_429": sum(1 for o in outcomes if o.status == 429),
        "errors": sum(1 for o in outcomes if o.status not in (200, 429)),
        # -1: the connection broke; a 4xx says the worker refused the request's size or body
        "error_statuses": dict(
            sorted(Counter(str(o.status) for o in outcomes if o.status not in (200, 429)).items())
        ),
        "unfinished": unfinished,
        "makespan_seconds": round(makespan, 3),
        "deadline_seconds": round(deadline_seconds, 3),
        # No first token for more than 5%: p95 is infinite, the rate misses any SLA.
        "ttft_p95_within_sla": _within(nearest_rank(all_ttfts, 95), sla_seconds),
    }


def _within(p95: float | None, sla_seconds: float) -> bool:
    return p95 is not None and p95 <= sla_seconds


def capacity(rows: list[dict]) -> dict:
    """The highest swept rate that kept p95 TTFT within the SLA, it and every lower rate.

    ``bound`` is ``"exact"`` (the next rate swept missed), ``"at_least"`` (every rate passed:
    the capacity is the highest swept or more), ``"below"`` (even the lowest missed: no
    ``capacity_rps``, ``below_rps`` is that lowest rate) or ``"none"`` (no rates).
    ``passed_above`` lists rates above the first miss that passed anyway (noise, or a worker
    that recovers), which the capacity does not count."""
    ordered = sorted(rows, key=lambda r: r["offered_rps"])
    if not ordered:
        return {"capacity_rps": None, "bound": "none", "passed_above": []}
    first_miss = next((i for i, r in enumerate(ordered) if not r["ttft_p95_within_sla"]), None)
    if first_miss is None:
        return {"capacity_rps": ordered[-1]["offered_rps"], "bound": "at_least", "passed_above": []}
    above = [r["offered_rps"] for r in ordered[first_miss + 1 :] if r["ttft_p95_within_sla"]]
    if first_miss == 0:
        lowest = ordered[0]["offered_rps"]
        return {"capacity_rps": None, "bound": "below", "below_rps": lowest, "passed_above": above}
    return {
        "capacity_rps": ordered[first_miss - 1]["offered_rps"],
        "bound": "exact",
        "first_missed_rps": ordered[first_miss]["offered_rps"],
        "passed_above": above,
    }


def capacity_line(result: dict, sla_seconds: float) -> str:
    head = f"capacity at p95 TTFT <= {sla_seconds * 1e3:g} ms: "
    rate, bound = result["capacity_rps"], result["bound"]
    if bound == "none":
        return head + "no rates measured"
    if bound == "at_least":
        line = f"at least {rate:g} req/s (the highest rate swept passed)"
    elif bound == "below":
        line = f"below {result['below_rps']:g} req/s (even the lowest rate swept missed)"
    else:
        line = f"{rate:g} req/s ({result['first_missed_rps']:g} req/s missed)"
    if result["passed_above"]:
        rates = ", ".join(f"{r:g}" for r in result["passed_above"])
        line += f"; {rates} req/s passed after a miss, not counted"
    return head + line


COLUMNS = [
    ("offered_rps", "offered/s", "g"),
    ("sent", "sent", "d"),
    ("completed", "done", "d"),
    ("achieved_rps", "achieved/s", ".2f"),
    ("ttft_p50_seconds", "TTFT p50 ms", "ms"),
    ("ttft_p95_seconds", "p95 ms", "ms"),
    ("ttft_p99_seconds", "p99 ms", "ms"),
    ("itl_p95_seconds", "ITL p95 ms", "ms"),
    ("output_tokens_per_second", "out tok/s", ".0f"),
    ("goodput_rps", "goodput/s", ".2f"),
    ("status_429", "429s", "d"),
    ("errors", "errors", "d"),
    ("unfinished", "unfinished", "d"),
]


def table_header(sla_seconds: float) -> str:
    cells = [f"{title:>11}" for _, title, _ in COLUMNS]
    return f"# goodput at TTFT <= {sla_seconds * 1e3:g} ms\n" + " ".join(cells)


def table_row(row: dict) -> str:
    cells = []
    for key, _, fmt in COLUMNS:
        value = row.get(key)
        if value is None and key.startswith("ttft_"):
            text = "inf" if row.get("sent") else "-"
        elif value is None:
            text = "-"
        elif fmt == "ms":
            text = f"{value * 1e3:.0f}"
        else:
            text = format(value, fmt)
        cells.append(f"{text:>11}")
    return " ".join(cells)


def stop_note(rate: float) -> str:
    return f"{rate:g} req/s missed the SLA: the higher rates are skipped (--stop-after-miss)"


def no_arrivals_note(rate: float) -> str:
    return f"{rate:g} req/s: no arrivals within --seconds, not measured"


def arrivals(requests: list[Request], endpoint: str) -> list[Arrival]:
    return [Arrival(r.arrival_seconds, endpoint, r.prompt_tokens, r.output_tokens)
            for r in requests]  # fmt: skip


def run(args, trace: list[Request], out=None) -> dict:
    out = out or sys.stdout
    sla = args.sla_ttft_ms / 1e3
    rows = []
    print(table_header(sla), file=out, flush=True)
    for rate in parse_rates(args.rates):
        requests = token_mix(
            trace, rate, args.seconds, args.requests, args.seed, args.max_prompt_tokens
        )
        if not requests:
            print(f"# {no_arrivals_note(rate)}", file=out, flush=True)
            continue
        deadline = requests[-1].arrival_seconds + args.drain_seconds
        outcomes = replay(arrivals(requests, args.endpoint), Fixed(args.url), deadline)
        row = rate_figures(rate, len(requests), outcomes, sla, deadline)
        rows.append(row)
        print(table_row(row), file=out, flush=True)
        if args.stop_after_miss and not row["ttft_p95_within_sla"]:
            print(f"# {stop_note(rate)}", file=out, flush=True)
            break
    result = capacity(rows)
    print(capacity_line(result, sla), file=out, flush=True)
    return {
        "benchmark": "carpool bench serve",
        "url": args.url,
        "trace": str(args.trace),
        "max_prompt_tokens": args.max_prompt_tokens,
        "requests_per_rate": args.requests,
        "seconds_per_rate": args.seconds,
        "seed": args.seed,
        "sla_ttft_seconds": sla,
        "rates": rows,
        "capacity": result,
    }


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        parse_rates(args.rates)
        if args.requests < 1 or args.seconds <= 0 or args.max_prompt_tokens < 1:
            raise ValueError("--requests, --seconds and --max-prompt-tokens must be positive")
        trace = load_azure_csv(args.trace, args.endpoint)
    except (ValueError, TraceError) as error:
        print(f"carpool bench serve: {error}", file=sys.stderr)
        return 2
    try:
        wait_ready(args.url, timeout=args.ready_seconds)
    except RuntimeError as error:
        print(f"carpool bench serve: {error}", file=sys.stderr)
        return 2
    document = run(args, trace)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=1) + "\n")
    return 0
