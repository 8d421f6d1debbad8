"""``carpool bench BENCHMARK ...``: the benchmarks run against a running worker.

Contract: ``main(argv) -> int`` dispatches ``argv[0]`` to the ``main(argv[1:])`` of the module
named below, imported lazily; ``--help`` (or nothing) lists them, an unknown name exits 2.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS: dict[str, tuple[str, str]] = {
    "serve": ("carpool_bench.serve", "the trace's token mix at a sweep of Poisson rates"),
}


def usage() -> str:
    lines = ["usage: carpool bench BENCHMARK [ARGS...]", "", "benchmarks:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    if argv[0] not in BENCHMARKS:
        print(f"carpool bench: unknown benchmark {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return int(importlib.import_module(BENCHMARKS[argv[0]][0]).main(argv[1:]) or 0)
