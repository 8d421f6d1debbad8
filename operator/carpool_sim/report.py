"""Summaries of runs: per policy and endpoint, as a dict (the `--json` document) and a table.

Contract: `summarize(result, spec, gpu_hour_price)` returns the JSON-able summary of one run:
`{"gpu_hours", "scale_events", "peak_replicas", "mean_replicas", "goodput_tokens_per_gpu_hour",
"cost_per_million_tokens", "endpoints": {name: {...}}}`. Definitions:
- a request *attains* its SLA when its first token came within the endpoint's
  `ttftP95Milliseconds`; for an endpoint without an SLA, when it completed (not rejected).
  Rejected and never-served requests count as misses. `sla_attainment` = attained / requests.
- TTFT and queue-wait percentiles are over the requests that got that far (seconds; null when
  none did).
- *goodput* = prompt + generated tokens of the requests that attained; *served* tokens are
  those of every completed request. Cost per million tokens = GPU-hours x price / served x 1e6.
`table(summaries)` renders them with rich.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.table import Table

from carpool_policy import PoolSpec
from carpool_sim.sim import RunResult


def _percentile(values: np.ndarray, q: float) -> float | None:
    values = values[~np.isnan(values)]
    return float(np.percentile(values, q)) if len(values) else None


def attained_mask(result: RunResult, spec: PoolSpec) -> np.ndarray:
    rec = result.recorder
    endpoints = {e.name: e for e in spec.endpoints}
    budgets = np.array(
        [endpoints[r.endpoint].ttft_p95_seconds or np.inf for r in rec.requests], dtype=float
    )
    completed = ~np.isnan(rec.finished_at)
    within = np.nan_to_num(rec.ttft, nan=np.inf) <= budgets
    return completed & within if len(budgets) else np.zeros(0, dtype=bool)


def summarize(result: RunResult, spec: PoolSpec, gpu_hour_price: float) -> dict[str, Any]:
    rec = result.recorder
    names = np.array([r.endpoint for r in rec.requests])
    tokens = np.array([r.prompt_tokens + r.output_tokens for r in rec.requests], dtype=float)
    attained = attained_mask(result, spec)
    completed = ~np.isnan(rec.finished_at)
    gpu_hours = result.gpu_seconds / 3600.0
    served_tokens = float(tokens[completed].sum())
    goodput_tokens = float(tokens[attained].sum())
    endpoints: dict[str, Any] = {}
    for e in spec.endpoints:
        mine = names == e.name
        count = int(mine.sum())
        ep_goodput = float(tokens[mine & attained].sum())
        endpoints[e.name] = {
            "requests": count,
            "sla_seconds": e.ttft_p95_seconds,
            "sla_attainment": float(attained[mine].mean()) if count else None,
            "completed": int((mine & completed).sum()),
            "rejected": int((mine & rec.was_rejected).sum()),
            "ttft_p50_seconds": _percentile(rec.ttft[mine], 50),
            "ttft_p95_seconds": _percentile(rec.ttft[mine], 95),
            "ttft_p99_seconds": _percentile(rec.ttft[mine], 99),
            "queue_wait_p50_seconds": _percentile(rec.queue_wait[mine], 50),
            "queue_wait_p95_seconds": _percentile(rec.queue_wait[mine], 95),
            "queue_wait_p99_seconds": _percentile(rec.queue_wait[mine], 99),
            "goodput_tokens": ep_goodput,
            "goodput_tokens_per_gpu_hour": ep_goodput / gpu_hours if gpu_hours else None,
        }
    replicas = [desired for _, desired, _ in result.timeline]
    return {
        "gpu_hours": gpu_hours,
        "scale_events": result.scale_events,
        "peak_replicas": max(replicas, default=0),
        "mean_replicas": float(np.mean(replicas)) if replicas else 0.0,
        "simulated_seconds": result.end_seconds,
        "served_tokens": served_tokens,
        "goodput_tokens_per_gpu_hour": goodput_tokens / gpu_hours if gpu_hours else None,
        "cost_per_million_tokens": (
            gpu_hours * gpu_hour_price / served_tokens * 1e6 if served_tokens else None
        ),
        "endpoints": endpoints,
    }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.0f}"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.2%}"


def table(summaries: dict[str, dict[str, Any]], title: str = "") -> Table:
    out = Table(title=title or None, header_style="bold")
    columns = [
        "policy", "endpoint", "SLA ms", "attained", "TTFT p50/p95/p99 ms",
        "queue p50/p95/p99 ms", "rejected", "GPU-h", "goodput Mtok/GPU-h", "$/Mtok", "scale ev.",
    ]  # fmt: skip
    for column in columns:
        out.add_column(column, justify="left" if column in ("policy", "endpoint") else "right")
    for policy, s in summaries.items():
        for i, (name, e) in enumerate(s["endpoints"].items()):
            first = i == 0
            ttft = "/".join(_ms(e[f"ttft_p{q}_seconds"]) for q in (50, 95, 99))
            wait = "/".join(_ms(e[f"queue_wait_p{q}_seconds"]) for q in (50, 95, 99))
            goodput = e["goodput_tokens_per_gpu_hour"]
            out.add_row(
                policy if first else "",
                name,
                _ms(e["sla_seconds"]),
                _pct(e["sla_attainment"]),
                ttft,
                wait,
                str(e["rejected"]),
                f"{s['gpu_hours']:.2f}" if first else "",
                "-" if goodput is None else f"{goodput / 1e6:.1f}",
                f"{s['cost_per_million_tokens']:.3f}"
                if first and s["cost_per_million_tokens"]
                else "",
                str(s["scale_events"]) if first else "",
                end_section=i == len(s["endpoints"]) - 1,
            )
    return out
