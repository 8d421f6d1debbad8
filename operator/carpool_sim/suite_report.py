"""The suite's tables: every policy of every variant, and carpool against issue 11's goals.

Contract: each function takes the variant documents of `carpool_sim.suite.run_variant`, in
order.
- `table(results)` (rich) and the first half of `markdown(results)`: one row per policy and
  variant: its setting, attainment per endpoint (an endpoint without an SLA attains when its
  request completes), GPU-hours, and whether it reached the variant's target.
- `summary_table(results)` and the second half of `markdown(results)`: per variant, the
  cheapest baseline that reaches the target, the clairvoyant bound, static, carpool, carpool's
  ratios to each, and the goals it misses (`goals(result)`).
- `goals(result)` lists carpool's missed goals, each with its gap: `reach` (a baseline reaches
  the target, carpool does not), `cost` (more GPU-hours than the cheapest baseline that
  reaches it), `bound` (over `BOUND_GOAL` x the clairvoyant bound), `static` (over the
  scenario's `goal_vs_static` x static, where it sets one).
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

BOUND_GOAL = 1.3


def goals(result: dict[str, Any]) -> list[str]:
    carpool, missed = result["carpool"], []
    if result["cheapest"] is not None and not carpool["reached"]:
        row = next(r for r in result["rows"] if r["policy"] == "carpool")
        missed.append(f"reach ({row['margin'] * 100:+.2f} pp)")
    if carpool["vs_cheapest"] is not None and carpool["vs_cheapest"] > 1.0:
        missed.append(f"cost {carpool['vs_cheapest']:.2f}x")
    if carpool["vs_clairvoyant"] is not None and carpool["vs_clairvoyant"] > BOUND_GOAL:
        missed.append(f"bound {carpool['vs_clairvoyant']:.2f}x")
    goal = result.get("goal_vs_static")
    if goal is not None and carpool["vs_static"] is not None and carpool["vs_static"] > goal:
        missed.append(f"static {carpool['vs_static']:.2f}x > {goal:g}x")
    return missed


def _variant(result: dict[str, Any]) -> str:
    return f"{result['scenario']} x{result['rate_scale']:g}"


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
    carpool = rows["carpool", "policy"]
    best = result["cheapest"]
    cheapest = (
        "none" if best is None
        else f"{best['policy']} {best['kind']} ({best['setting']}) {best['gpu_hours']:.2f}"
    )  # fmt: skip
    return [
        _variant(result),
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


def table(results: list[dict[str, Any]]) -> Table:
    out = Table(title="policies per variant", header_style="bold")
    for column in POLICY_COLUMNS:
        out.add_column(column, justify="right" if column == "GPU-h" else "left")
    for result in results:
        rows = _rows(result)
        for i, row in enumerate(rows):
            out.add_row(_variant(result) if i == 0 else "", *row, end_section=i == len(rows) - 1)
    return out


def summary_table(results: list[dict[str, Any]]) -> Table:
    out = Table(title="carpool against the baselines and the bound", header_style="bold")
    for column in SUMMARY_COLUMNS:
        out.add_column(column)
    for result in results:
        out.add_row(*_summary(result))
    return out


def _markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(results: list[dict[str, Any]]) -> str:
    policy_rows = []
    for result in results:
        for i, row in enumerate(_rows(result)):
            policy_rows.append([_variant(result) if i == 0 else "", *row])
    return (
        _markdown_table(SUMMARY_COLUMNS, [_summary(r) for r in results])
        + "\n"
        + _markdown_table(POLICY_COLUMNS, policy_rows)
    )
