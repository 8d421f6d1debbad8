"""``carpool cluster up | down | status | env | build``: the local control plane from a shell.

Contract: ``up`` starts etcd, kube-apiserver, controller-manager, scheduler and (unless
``--no-prometheus``) Prometheus, plus (with ``--gpu-nodes N``) a process kubelet serving N GPU
nodes, then prints how to use them; ``env`` prints ``export KUBECONFIG=...`` for ``eval``;
``down`` stops exactly what ``up`` started; ``status`` shows each process and exits 1 if
any is down. All state and logs live in ``--state-dir`` (default ``$CARPOOL_STATE_DIR`` or
``~/.local/state/carpool/cluster``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from carpool_cluster import binaries, controlplane, processes, prometheus


def default_state_dir() -> Path:
    configured = os.environ.get("CARPOOL_STATE_DIR")
    if configured:
        return Path(configured)
    return Path.home() / ".local" / "state" / "carpool" / "cluster"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where state and logs live (default: %(default)s)",
    )
    parser = argparse.ArgumentParser(prog="carpool cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser(
        "up", parents=[common], help="start a local control plane (builds binaries on first use)"
    )
    up.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    up.add_argument(
        "--gpu-nodes", type=int, default=0, help="start a process kubelet with this many GPU nodes"
    )
    up.add_argument("--gpus-per-node", type=int, default=2)
    sub.add_parser("down", parents=[common], help="stop everything 'up' started")
    sub.add_parser("status", parents=[common], help="show the processes and endpoints")
    sub.add_parser("env", parents=[common], help="print shell exports for this cluster")
    sub.add_parser("build", parents=[common], help="build the pinned control-plane binaries only")
    return parser


def _print_usage(state: controlplane.ClusterState) -> None:
    prom = prometheus.url_of(state)
    print(f"control plane ready: Kubernetes {state.kubernetes_version} at {state.server}")
    if prom:
        print(f"Prometheus: {prom}")
    print(f"state and logs: {state.state_dir}")
    print(f'use it:  eval "$(carpool cluster env --state-dir {state.state_dir})"')
    print("         kubectl get --raw /readyz?verbose")
    print(f"stop it: carpool cluster down --state-dir {state.state_dir}")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    state_dir = args.state_dir.resolve()
    if args.command == "build":
        for name, path in binaries.ensure_binaries().as_dict().items():
            print(f"{name}: {path}")
        return 0
    if args.command == "up":
        try:
            state = controlplane.up(state_dir)
            if not args.no_prometheus:
                prometheus.start(state)
            if args.gpu_nodes:
                from carpool_cluster import kubelet

                kubelet.start_daemon(state, args.gpu_nodes, args.gpus_per_node)
        except (processes.StartupError, binaries.BuildError) as error:
            print(f"carpool cluster up failed: {error}", file=sys.stderr)
            controlplane.down(state_dir)
            return 1
        _print_usage(state)
        return 0
    if args.command == "down":
        stopped = controlplane.down(state_dir)
        print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        return 0
    state = controlplane.load(state_dir)
    if state is None:
        print(f"no cluster state in {state_dir}; run 'carpool cluster up'", file=sys.stderr)
        return 1
    if args.command == "env":
        folders = {str(Path(state.kubectl).parent), str(Path(state.helm).parent)}
        print(f"export KUBECONFIG={state.kubeconfig}")
        print(f"export PATH={':'.join(sorted(folders))}:$PATH")
        prom = prometheus.url_of(state)
        if prom:
            print(f"export CARPOOL_PROMETHEUS_URL={prom}")
        return 0
    running = controlplane.status(state_dir)
    for name, alive in running.items():
        record = state.processes[name]
        port = f" port {record.port}" if record.port else ""
        print(f"{name:<24} {'running' if alive else 'STOPPED'}  pid {record.pid}{port}")
    print(f"server: {state.server}\nkubeconfig: {state.kubeconfig}")
    return 0 if running and all(running.values()) else 1
