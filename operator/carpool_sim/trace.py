"""Request traces: recorded (the Azure LLM inference CSV format) and their transformations.

Contract:
- A trace is a list of `Request`s sorted by `arrival_seconds`, relative to the start of the run
  (the first recorded request arrives at 0).
- `load_azure_csv(path, endpoint)` reads `TIMESTAMP,ContextTokens,GeneratedTokens` rows (the
  format of the Azure Public Dataset's LLM inference traces) and raises `TraceError` naming the
  file and line of a row it cannot read.
- `scale_rate(trace, x)` compresses the time axis by `x` (x > 1 is x times the load, over a
  run 1/x as long); `loop_to(trace, duration, period)` repeats a trace back to back until the
  run covers `duration` seconds, so a compressed hour can still be replayed for an hour.
- `poisson_mix(trace, rate, duration, rng, max_prompt_tokens)` keeps a trace's token mix but not
  its timing: Poisson arrivals at `rate`, each request's sizes drawn from the trace (prompts
  capped), deterministic for the generator's state.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np


class TraceError(ValueError):
    """A trace file or pattern that cannot be read; the message says where and why."""


@dataclass(frozen=True)
class Request:
    endpoint: str
    arrival_seconds: float
    prompt_tokens: int
    output_tokens: int


def _parse_timestamp(text: str) -> float:
    # The dataset writes 7 fractional digits; datetime takes at most 6.
    head, _, frac = text.strip().partition(".")
    stamp = datetime.fromisoformat(head)
    return stamp.timestamp() + (float("0." + frac) if frac else 0.0)


def load_azure_csv(path: str | Path, endpoint: str) -> list[Request]:
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as error:
        raise TraceError(f"{path}: cannot open: {error.strerror}") from error
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        expected = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
        if header is None or [h.strip() for h in header] != expected:
            raise TraceError(f"{path}: line 1: expected the header {','.join(expected)}")
        rows: list[tuple[float, int, int]] = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                stamp, context, generated = row
                rows.append((_parse_timestamp(stamp), int(context), int(generated)))
            except ValueError as error:
                raise TraceError(f"{path}: line {line}: cannot read {row!r}: {error}") from error
    if not rows:
        raise TraceError(f"{path}: no requests")
    rows.sort()
    start = rows[0][0]
    # A request generates at least one token (the first one comes out of its prefill).
    return [Request(endpoint, t - start, max(1, c), max(1, g)) for t, c, g in rows]


def scale_rate(trace: list[Request], rate_scale: float) -> list[Request]:
    if rate_scale <= 0:
        raise TraceError(f"rate scale must be > 0, got {rate_scale}")
    return [replace(r, arrival_seconds=r.arrival_seconds / rate_scale) for r in trace]


def loop_to(trace: list[Request], duration_seconds: float, period_seconds: float) -> list[Request]:
    """Repeat `trace` every `period_seconds` and keep the arrivals before `duration_seconds`."""
    if not trace or period_seconds <= 0:
        return [r for r in trace if r.arrival_seconds < duration_seconds]
    looped: list[Request] = []
    offset = 0.0
    while offset < duration_seconds:
        for r in trace:
            at = r.arrival_seconds + offset
            if at >= duration_seconds:
                break
            looped.append(replace(r, arrival_seconds=at))
        offset += period_seconds
    return looped


def trace_span_seconds(trace: list[Request]) -> float:
    """The period of a recorded trace when looped: its last arrival, rounded up to a second."""
    if not trace:
        return 0.0
    return float(int(trace[-1].arrival_seconds) + 1)


def merge(traces: list[list[Request]]) -> list[Request]:
    """All endpoints' requests in one arrival order (stable: ties keep the traces' order)."""
    return sorted((r for t in traces for r in t), key=lambda r: r.arrival_seconds)


def poisson_mix(
    trace: list[Request],
    rate: float,
    duration_seconds: float,
    rng: np.random.Generator,
    max_prompt_tokens: int | None = None,
) -> list[Request]:
    """Poisson arrivals at `rate` per second for `duration_seconds`, sized like `trace`."""
    if rate <= 0 or not trace:
        raise TraceError(f"a token mix needs a non-empty trace and a rate > 0, got {rate}")
    count = int(rng.poisson(rate * duration_seconds))
    times = np.sort(rng.uniform(0.0, duration_seconds, count))
    picks = rng.integers(0, len(trace), count)
    cap = max_prompt_tokens or max(r.prompt_tokens for r in trace)
    return [
        replace(trace[i], arrival_seconds=float(t), prompt_tokens=min(cap, trace[i].prompt_tokens))
        for t, i in zip(times, picks, strict=True)
    ]
