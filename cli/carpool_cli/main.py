"""``carpool SUBCOMMAND ...``: dispatch to the component that owns the subcommand.

Contract: each component exposes ``main(argv: list[str]) -> int`` in the module named below.
Components are imported lazily, so ``carpool sim`` never imports torch and ``carpool worker``
never imports kopf.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "cluster": ("carpool_cluster.cli", "run a local control plane, Prometheus and GPU nodes"),
    "operator": ("carpool_operator.cli", "run the InferencePool operator"),
    "worker": ("carpool_worker.cli", "serve a model with per-endpoint continuous batching"),
    "profile": ("carpool_worker.profile_cli", "measure a model's step-time profile"),
    "sim": ("carpool_sim.cli", "replay a trace through carpool's policy and the baselines"),
    "fidelity": ("carpool_bench.fidelity", "the simulator against a worker, on the same arrivals"),
    "bench": ("carpool_bench.cli", "benchmarks against a running worker (carpool bench serve)"),
    "demo": ("carpool_cluster.demo", "the closed loop on a local cluster, end to end"),
}


def usage() -> str:
    lines = ["usage: carpool SUBCOMMAND [ARGS...]", "", "subcommands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"carpool: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
