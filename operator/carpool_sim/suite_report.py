"""The suite's tables: every policy of every variant, and carpool against issue 11's goals.

Contract: each function takes the variant documents of `carpool_sim.suite.run_variant`, in
order. `markdown(results)` holds the summary, then the spread (where there is one), then the
policies, as tables.
- `table(results)` (rich) and the policies' Markdown table: one row per policy and variant:
  its setting, attainment per endpoint (an endpoint without an SLA attains when its request
  completes), GPU-hours, and whether it reached the variant's target.
- `summary_table(results)` and the summary's Markdown table: per variant, the cheapest baseline
  that reaches the target, the clairvoyant bound, static, carpool, carpool's ratios to each,
  and the goals it misses (`goals(result)`).
- `goals(result)` lists carpool's missed goals, each with its gap: `reach` (a baseline reaches
  the target, carpool does not), `cost` (more GPU-hours than the cheapest baseline that
  reaches it), `bound` (over `BOUND_GOAL` x the clairvoyant bound), `static` (over the
  scenario's `goal_vs_static` x static, where it sets one).
- `spread_table(results)` and the spread's Markdown table, where a variant ran on more than one
  sample path (`--seeds`): per variant, over its seeds, how often carpool reached the target
  and met every goal, its worst margin, and the range of its ratios. One sample path can swing
  by a decision taken on the other side of a threshold; the spread says how much.
- `variant_label(result)`: "code-trace x2", with the seed where it is not the file's and the
  routing where it is not the least-request gateway's.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import median
from typing import Any

from rich.table import Table

from carpool_sim.pool import LEAST_REQUEST

BOUND_GOAL = 1.3


def _carpool_row(result: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in result["rows"] if r["policy"] == "carpool")


def goals(result: dict[str, Any]) -> list[str]:
    carpool, missed = result["carpool"], []
    if result["cheapest"] is not None and not carpool["reached"]:
        missed.append(f"reach ({_carpool_row(result)['margin'] * 100:+.2f} pp)")
    if carpool["vs_cheapest"] is not None and carpool["vs_cheapest"] > 1.0:
        missed.append(f"cost {_over_one(carpool['vs_cheapest'])}")
    if carpool["vs_clairvoyant"] is not None and carpool["vs_clairvoyant"] > BOUND_GOAL:
        missed.append(f"bound {carpool['vs_clairvoyant']:.2f}x")
    goal = result.get("goal_vs_static")
    if goal is not None and carpool["vs_static"] is not None and carpool["vs_static"] > goal:
        missed.append(f"static {carpool['vs_static']:.2f}x > {goal:g}x")
    return missed


def _over_one(ratio: float) -> str:
    """A ratio over 1 that never prints as "1.00x": a miss by a hair shows its digits."""
    return f"{ratio:.2f}x" if ratio >= 1.005 else f"{ratio:.4f}x"


def _variant(result: dict[str, Any]) -> str:
    routing = result.get("routing", LEAST_REQUEST)
    label = f"{result['scenario']} x{result['rate_scale']:g}"
    return label if routing == LEAST_REQUEST else f"{label} ({routing} routing)"


def variant_label(result: dict[str, Any]) -> str:
    seed = result.get("seed")
    other_path = seed is not None and seed != result.get("file_seed", seed)
    return _variant(result) + (f" seed {seed}" if other_path else "")


def _short(name: str) -> str:
    return name.split("-")[0]


def _attainment(row: dict[str, Any]) -> str:
    return " · ".join(
        f"{_short(name)} {share:.2%}"
        for name, share in row["attainment"].items()
        if share is not None
    )


def _targets(result: dict[str, Any]) -> str:
    return " · ".join(
        f"{_short(name)} {result['targets'][name]:.2%}"
        for name, count in result["requests"].items()
        if count
    )


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _rows(result: dict[str, Any]) -> list[list[str]]:
    out = []
    for row in result["rows"]:
        label = row["policy"] if row["kind"] in ("hindsight", "bound", "policy") else (
            f"{row['policy']} {row['kind']}"
        )  # fmt: skip
        out.append([
            label, row["setting"], _attainment(row), f"{row['gpu_hours']:.2f}",
            "yes" if row["reached"] else "no",
        ])  # fmt: skip
    return out


def _summary(result: dict[str, Any]) -> list[str]:
    rows = {(r["policy"], r["kind"]): r for r in result["rows"]}
    carpool = _carpool_row(result)
    best = result["cheapest"]
    cheapest = (
        "none" if best is None
        else f"{best['policy']} {best['kind']} ({best['setting']}) {best['gpu_hours']:.2f}"
    )  # fmt: skip
    return [
        variant_label(result),
        _targets(result),
        cheapest,
        f"{rows['clairvoyant', 'bound']['gpu_hours']:.2f}",
        f"{rows['static', 'hindsight']['gpu_hours']:.2f}",
        f"{carpool['gpu_hours']:.2f} ({'reached' if carpool['reached'] else 'missed'})",
        _x(result["carpool"]["vs_cheapest"]),
        _x(result["carpool"]["vs_clairvoyant"]),
        _x(result["carpool"]["vs_static"]),
        ", ".join(goals(result)) or "met",
    ]


POLICY_COLUMNS = ["variant", "policy", "setting", "attainment", "GPU-h", "reached"]
SUMMARY_COLUMNS = [
    "variant", "target", "cheapest reaching, GPU-h", "clairvoyant GPU-h", "static GPU-h",
    "carpool GPU-h", "carpool / cheapest", "carpool / clairvoyant", "carpool / static",
    "goals missed",
]  # fmt: skip


SPREAD_COLUMNS = [
    "variant", "seeds", "carpool reached", "goals met", "worst margin",
    "carpool / cheapest", "carpool / clairvoyant", "carpool / static",
]  # fmt: skip


def _by_variant(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        grouped[_variant(result)].append(result)
    return grouped


def _range(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{min(known):.2f}x .. {max(known):.2f}x (median {median(known):.2f}x)"


def _spread(results: list[dict[str, Any]]) -> list[str]:
    margins = [_carpool_row(result)["margin"] for result in results]
    n = len(results)
    return [
        _variant(results[0]),
        ", ".join(str(r["seed"]) for r in results),
        f"{sum(r['carpool']['reached'] for r in results)} of {n}",
        f"{sum(not goals(r) for r in results)} of {n}",
        f"{min(margins) * 100:+.2f} pp",
        *(
            _range([r["carpool"][key] for r in results])
            for key in ("vs_cheapest", "vs_clairvoyant", "vs_static")
        ),
    ]


def spread_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row per variant that ran on more than one sample path."""
    return [_spread(group) for group in _by_variant(results).values() if len(group) > 1]


def table(results: list[dict[str, Any]]) -> Table:
    out = Table(title="policies per variant", header_style="bold")
    for column in POLICY_COLUMNS:
        out.add_column(column, justify="right" if column == "GPU-h" else "left")
    for result in results:
        rows = _rows(result)
        for i, row in enumerate(rows):
            label = variant_label(result) if i == 0 else ""
            out.add_row(label, *row, end_section=i == len(rows) - 1)
    return out


def summary_table(results: list[dict[str, Any]]) -> Table:
    out = Table(title="carpool against the baselines and the bound", header_style="bold")
    for column in SUMMARY_COLUMNS:
        out.add_column(column)
    for result in results:
        out.add_row(*_summary(result))
    return out


def spread_table(results: list[dict[str, Any]]) -> Table:
    out = Table(title="carpool over the sample paths of each variant", header_style="bold")
    for column in SPREAD_COLUMNS:
        out.add_column(column)
    for row in spread_rows(results):
        out.add_row(*row)
    return out


def _markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(results: list[dict[str, Any]]) -> str:
    policy_rows = []
    for result in results:
        for i, row in enumerate(_rows(result)):
            policy_rows.append([variant_label(result) if i == 0 else "", *row])
    spread = spread_rows(results)
    return (
        _markdown_table(SUMMARY_COLUMNS, [_summary(r) for r in results])
        + ("\n" + _markdown_table(SPREAD_COLUMNS, spread) if spread else "")
        + "\n"
        + _markdown_table(POLICY_COLUMNS, policy_rows)
    )
