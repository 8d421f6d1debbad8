"""The latency histogram buckets: the worker exports them, the simulator records into them, and
the operator's PromQL reads quantiles through them, so all three resolve a p95 alike.

Contract: `LATENCY_BUCKETS` are upper bounds in seconds (+Inf implied), about 25% apart from
1 ms to 60 s, so `histogram_quantile(0.95, ...)` resolves a p95 anywhere from 5 ms to 30 s to
within a bucket's width of the truth. `geometric(start, stop, ratio)` builds such a ladder.
`PROMPT_TOKEN_BUCKETS` are upper bounds in tokens, 1.5x to 2x apart from 64 to 131,072: the
prompt lengths of an endpoint's requests, whose spread prices its prefill (prefill time grows
faster than the prompt, so a heavy-tailed mix costs more than its mean prompt). The operator
reads the mix over `PROMPT_MIX_WINDOW_SECONDS` (the simulator alike): a mix is a property of
the traffic, and a minute's swings with its few longest prompts.
`histogram_quantile(q, counts)` estimates a quantile from per-bucket counts (one per bound, then
+Inf) by linear interpolation inside the bucket, as Prometheus' histogram_quantile does, so the
simulator and `carpool fidelity` read a histogram as the operator's PromQL does.
"""

from __future__ import annotations


def geometric(start: float, stop: float, ratio: float) -> tuple[float, ...]:
    out, value = [], start
    while value <= stop * 1.0001:
        # Round to 3 significant digits so bucket labels stay readable (le="0.0125").
        out.append(float(f"{value:.3g}"))
        value *= ratio
    return tuple(out)


LATENCY_BUCKETS = geometric(0.001, 60.0, 1.25)
PROMPT_TOKEN_BUCKETS = tuple(
    sorted({2**k for k in range(6, 18)} | {3 * 2**k for k in range(5, 16)})
)
PROMPT_MIX_WINDOW_SECONDS = 600


def histogram_quantile(q: float, counts) -> float | None:
    """The ``q`` quantile of observations counted per bucket of ``LATENCY_BUCKETS`` (+Inf last);
    None with no observations."""
    total = float(sum(counts))
    if total <= 0:
        return None
    rank, cumulative = q * total, 0.0
    for i, inside in enumerate(counts):
        if cumulative + inside >= rank and inside > 0:
            if i >= len(LATENCY_BUCKETS):
                return LATENCY_BUCKETS[-1]
            lower = 0.0 if i == 0 else LATENCY_BUCKETS[i - 1]
            return lower + (LATENCY_BUCKETS[i] - lower) * (rank - cumulative) / inside
        cumulative += inside
    return LATENCY_BUCKETS[-1]
