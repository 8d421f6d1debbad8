"""PNG plots of runs: replicas and p95 TTFT over time, one panel per policy.

Contract: `plot_runs(results, spec, path)` writes one PNG with a panel per run, sharing the
time axis: desired and ready replicas (left axis) and, for every endpoint with an SLA, the p95
TTFT of the first tokens sent in each `window_seconds` (right axis, log scale) against its SLA
(dashed). Uses matplotlib's non-interactive Agg backend; returns the path written.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from carpool_policy import PoolSpec  # noqa: E402
from carpool_sim.sim import RunResult  # noqa: E402


def windowed_p95(
    first_tokens: list[tuple[float, float, str]], endpoint: str, window_seconds: float
) -> tuple[np.ndarray, np.ndarray]:
    """(window mid-times, p95 TTFT in each window with at least one first token)."""
    points = np.array([(t, ttft) for t, ttft, name in first_tokens if name == endpoint])
    if len(points) == 0:
        return np.zeros(0), np.zeros(0)
    bins = np.floor(points[:, 0] / window_seconds).astype(int)
    mids, p95s = [], []
    for b in np.unique(bins):
        mids.append((b + 0.5) * window_seconds)
        p95s.append(np.percentile(points[bins == b, 1], 95))
    return np.array(mids), np.array(p95s)


def plot_runs(
    results: list[RunResult],
    spec: PoolSpec,
    path: str | Path,
    window_seconds: float = 30.0,
    title: str = "",
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sla_endpoints = [e for e in spec.endpoints if e.has_sla]
    fig, axes = plt.subplots(
        len(results), 1, figsize=(11, 2.3 * len(results) + 0.6), sharex=True, squeeze=False
    )
    top = max((max(d for _, d, _ in r.timeline) for r in results if r.timeline), default=1)
    for ax, result in zip(axes[:, 0], results, strict=True):
        times = np.array([t for t, _, _ in result.timeline]) / 60.0
        ax.step(times, [d for _, d, _ in result.timeline], where="post", label="desired")
        ax.step(times, [r for _, _, r in result.timeline], where="post", label="ready", alpha=0.7)
        ax.set_ylim(0, top + 1)
        ax.set_ylabel("replicas")
        ax.set_title(result.policy, loc="left", fontsize=10)
        right = ax.twinx()
        right.set_yscale("log")
        right.set_ylabel("p95 TTFT (s)")
        for i, e in enumerate(sla_endpoints):
            mids, p95s = windowed_p95(result.recorder.first_tokens, e.name, window_seconds)
            color = f"C{2 + i}"
            right.plot(mids / 60.0, p95s, ".", ms=3, color=color, label=f"{e.name} p95 TTFT")
            right.axhline(e.ttft_p95_seconds, ls="--", lw=0.8, color=color)
        right.set_ylim(0.01, 100)
    handles = axes[0, 0].get_legend_handles_labels()
    right_handles = fig.axes[len(results)].get_legend_handles_labels()
    fig.legend(
        handles[0] + right_handles[0],
        handles[1] + right_handles[1],
        loc="upper right",
        ncol=4,
        fontsize=8,
    )
    axes[-1, 0].set_xlabel("minutes")
    if title:
        fig.suptitle(title, x=0.01, ha="left", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
