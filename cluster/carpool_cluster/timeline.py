"""What happened during a closed-loop run: samples, client outcomes, events; views of them.

Contract: a ``Timeline`` collects, on one clock (seconds since the load started), the pool's
replicas and status sampled every second (``sample_until``) and every client request's outcome
(``add_outcome``). ``p95_ttft(endpoint, t)`` is the clients' p95 TTFT over the 10 s before
``t``. ``summary()`` reduces it per phase (before, during and after the burst) and measures the
two reaction times the operator is judged by: burst start → first scale-up decision, and burst
start → SLA met again. ``render_live`` draws a rich terminal view; ``write_png`` the timeline
plot; ``summary_table`` prints the summary.
"""

from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from carpool_cluster import scenario
from carpool_cluster.load import Outcome

WINDOW_SECONDS = 10.0


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


@dataclasses.dataclass
class Timeline:
    interactive: str
    offline: str
    sla_seconds: float
    burst: tuple[float, float]
    load_seconds: float
    origin: float = dataclasses.field(default_factory=time.monotonic)
    origin_wall: float = dataclasses.field(default_factory=time.time)
    samples: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    outcomes: list[Outcome] = dataclasses.field(default_factory=list)
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.origin

    def add_outcome(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def add_outcomes(self, outcomes: list[Outcome]) -> None:
        """The replay's final list: keeps the live view's records, adds nothing twice."""
        with self._lock:
            seen = {id(o) for o in self.outcomes}
            self.outcomes.extend(o for o in outcomes if id(o) not in seen)

    def sample_until(self, api, namespace: str, name: str, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            try:
                snapshot = scenario.pool_snapshot(api, namespace, name)
            except Exception:  # the API server being slow must not end the recording
                continue
            snapshot["t"] = self.now()
            with self._lock:
                self.samples.append(snapshot)

    def latest_desired(self) -> int:
        return self.samples[-1]["desired"] if self.samples else 0

    def p95_ttft(self, endpoint: str, at: float) -> float | None:
        with self._lock:
            values = [
                o.ttft_seconds
                for o in self.outcomes
                if o.arrival.endpoint == endpoint
                and o.ttft_seconds is not None
                and at - WINDOW_SECONDS <= o.sent_at + o.ttft_seconds <= at
            ]
        return _p95(values)

    def _event_times(self, reason: str) -> list[float]:
        times = []
        for event in self.events:
            stamp = event["time"]
            if event["reason"] == reason and isinstance(stamp, datetime.datetime):
                times.append(stamp.timestamp() - self.origin_wall)
        return sorted(times)

    def _phase(self, start: float, end: float) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for endpoint in (self.interactive, self.offline):
            sent = [
                o
                for o in self.outcomes
                if o.arrival.endpoint == endpoint and start <= o.arrival.at_seconds < end
            ]
            ttfts = [o.ttft_seconds for o in sent if o.ttft_seconds is not None]
            within = sum(1 for t in ttfts if t <= self.sla_seconds)
            row[endpoint] = {
                "requests": len(sent),
                "ok": sum(1 for o in sent if o.status == 200),
                "rejected": sum(1 for o in sent if o.status == 429),
                "ttft_p95_seconds": _p95(ttfts),
                "within_sla": (within / len(sent))
                if sent and endpoint == self.interactive
                else None,
            }
        replicas = [s["desired"] for s in self.samples if start <= s["t"] < end]
        row["replicas"] = {"min": min(replicas, default=None), "max": max(replicas, default=None)}
        return row

    def summary(self) -> dict[str, Any]:
        start, end = self.burst
        ups = [t for t in self._event_times("ScaledUp") if t >= start]
        downs = [t for t in self._event_times("ScaledDown") if t >= end]
        # SLA restored: the first moment after the burst began from which the clients' p95
        # stays within the SLA for a whole window, after having broken it.
        broken_at = restored_at = None
        probe = start
        while probe <= self.load_seconds:
            p95 = self.p95_ttft(self.interactive, probe)
            if p95 is not None and p95 > self.sla_seconds and broken_at is None:
                broken_at = probe
            if (
                broken_at is not None
                and restored_at is None
                and p95 is not None
                and p95 <= self.sla_seconds
                and (self.p95_ttft(self.interactive, probe + WINDOW_SECONDS) or 0)
                <= self.sla_seconds
            ):
                restored_at = probe
            probe += 1.0
        return {
            "sla_seconds": self.sla_seconds,
            "burst_seconds": list(self.burst),
            "phases": {
                "before burst": self._phase(0, start),
                "burst": self._phase(start, end),
                "after burst": self._phase(end, self.load_seconds),
            },
            "sla_broken_after_burst_start_seconds": None
            if broken_at is None
            else broken_at - start,
            "first_scale_up_after_burst_start_seconds": ups[0] - start if ups else None,
            "first_scale_up_after_sla_broken_seconds": (ups[0] - broken_at)
            if ups and broken_at is not None
            else None,
            "sla_restored_after_burst_start_seconds": None
            if restored_at is None
            else restored_at - start,
            "first_scale_down_after_burst_end_seconds": downs[0] - end if downs else None,
            "scale_events": [
                e for e in self.events if e["reason"] in ("ScaledUp", "ScaledDown", "Retuned")
            ],
        }


def _status_cell(value: float | None, sla: float | None) -> str:
    if value is None:
        return "-"
    text = f"{value * 1000:.0f} ms"
    if sla is None:
        return text
    return f"[green]{text}[/]" if value <= sla else f"[red]{text}[/]"


def render_live(timeline: Timeline, keep_going: Callable[[], bool]) -> None:
    from rich.live import Live
    from rich.table import Table

    def view() -> Table:
        now = timeline.now()
        phase = "burst" if timeline.burst[0] <= now < timeline.burst[1] else "steady"
        sample = timeline.samples[-1] if timeline.samples else {}
        table = Table(
            title=f"carpool demo — t={now:5.0f}s ({phase}) — replicas "
            f"{sample.get('ready', 0)} ready / {sample.get('desired', 0)} desired"
        )
        for column in (
            "endpoint",
            "client p95 TTFT (10 s)",
            "operator p95 TTFT",
            "SLA",
            "maxBatchSize",
            "window ms",
            "req/s",
        ):
            table.add_column(column)
        for endpoint in (timeline.interactive, timeline.offline):
            sla = timeline.sla_seconds if endpoint == timeline.interactive else None
            status = (sample.get("endpoints") or {}).get(endpoint, {})
            operator_p95 = status.get("ttftP95Milliseconds")
            table.add_row(
                endpoint,
                _status_cell(timeline.p95_ttft(endpoint, now), sla),
                "-" if operator_p95 is None else f"{operator_p95} ms",
                f"{sla * 1000:.0f} ms" if sla else "none",
                str(status.get("maxBatchSize", "-")),
                str(status.get("batchWindowMilliseconds", "-")),
                status.get("arrivalRatePerSecond", "-"),
            )
        reason = (sample.get("last_decision") or {}).get("reason", "")
        table.caption = f"last decision: {reason[:160]}"
        return table

    with Live(view(), refresh_per_second=2) as live:
        while keep_going():
            time.sleep(0.5)
            live.update(view())


def summary_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="carpool demo — summary")
    for column in (
        "phase",
        "endpoint",
        "requests",
        "ok",
        "429",
        "p95 TTFT",
        "within SLA",
        "replicas",
    ):
        table.add_column(column)
    for phase, row in summary["phases"].items():
        replicas = f"{row['replicas']['min']}–{row['replicas']['max']}"
        for endpoint, stats in row.items():
            if endpoint == "replicas":
                continue
            p95 = stats["ttft_p95_seconds"]
            within = stats["within_sla"]
            table.add_row(
                phase,
                endpoint,
                str(stats["requests"]),
                str(stats["ok"]),
                str(stats["rejected"]),
                "-" if p95 is None else f"{p95 * 1000:.0f} ms",
                "-" if within is None else f"{within:.1%}",
                replicas,
            )
    console = Console()
    console.print(table)

    def seconds(key: str) -> str:
        value = summary[key]
        return "never" if value is None else f"{value:.0f} s"

    console.print(
        f"burst start → SLA broken (clients' 10 s p95): "
        f"{seconds('sla_broken_after_burst_start_seconds')}"
    )
    console.print(
        f"burst start → first scale-up decision: "
        f"{seconds('first_scale_up_after_burst_start_seconds')} "
        f"(after the SLA broke: {seconds('first_scale_up_after_sla_broken_seconds')})"
    )
    console.print(
        f"burst start → SLA met again: {seconds('sla_restored_after_burst_start_seconds')}"
    )
    console.print(
        f"burst end → first scale-down: {seconds('first_scale_down_after_burst_end_seconds')}"
    )
    simulator = summary.get("simulator")
    if simulator:
        predicted, real = simulator["predicted"], simulator["measured"]
        for name, figures in real["endpoints"].items():
            want = predicted["endpoints"].get(name, {}).get("ttft_p95_seconds")
            console.print(
                f"{name} p95 TTFT: measured {figures['ttft_p95_seconds'] * 1000:.0f} ms, "
                f"carpool sim predicted {'-' if want is None else f'{want * 1000:.0f} ms'}"
            )
        console.print(
            f"replica-minutes: measured {real['replica_minutes']}, "
            f"carpool sim predicted {predicted['replica_minutes']}"
        )


def write_png(timeline: Timeline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    times = [s["t"] for s in timeline.samples]
    top.step(times, [s["desired"] for s in timeline.samples], where="post", label="desired")
    top.step(times, [s["ready"] for s in timeline.samples], where="post", label="ready")
    top.set_ylabel("worker pods")
    for reason, color in (("ScaledUp", "tab:red"), ("ScaledDown", "tab:green")):
        for moment in timeline._event_times(reason):
            top.axvline(moment, color=color, linestyle=":", linewidth=1)
    top.legend(loc="upper left")
    grid = [t * 1.0 for t in range(int(max(times, default=0)) + 1)]
    for endpoint in (timeline.interactive, timeline.offline):
        values = [timeline.p95_ttft(endpoint, t) for t in grid]
        bottom.plot(
            grid,
            [v * 1000 if v is not None else float("nan") for v in values],
            label=f"{endpoint} p95 TTFT (clients, 10 s)",
        )
    bottom.axhline(
        timeline.sla_seconds * 1000,
        color="black",
        linestyle="--",
        label=f"{timeline.interactive} SLA",
    )
    bottom.set_yscale("log")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("seconds since the load started (dotted: scale-up red, scale-down green)")
    bottom.legend(loc="upper left")
    for axis in (top, bottom):
        axis.axvspan(*timeline.burst, color="orange", alpha=0.15)
    figure.suptitle("carpool: a burst, the scale-up it causes, and the scale-down after it")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
