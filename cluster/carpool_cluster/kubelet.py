"""The process kubelet: GPU Nodes whose pods run as local processes on loopback IPs.

Contract: ``python -m carpool_cluster.kubelet --kubeconfig K --nodes N --gpus-per-node G``
registers N Ready Nodes (``carpool-gpu-<i>``) with ``nvidia.com/gpu: G`` capacity, renews
their Leases, and every tick: starts the pods the scheduler bound to them (one loopback IP per
pod, ``127.S.x.y`` with ``S`` per kubelet, reported as ``podIP``), reports phase, readiness
(from the readiness probe), restarts and container states, and stops the process of a pod
being deleted before removing the pod object, as the kubelet does. SIGTERM stops every pod
process and exits.

It is a test stand-in for the kubelet and a container runtime, not a node agent: no images, no
cgroups, no resource isolation. The scheduler, the controllers and Prometheus's service
discovery see real Node and Pod objects.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import signal
import sys
import threading
import time
from pathlib import Path

from kubernetes import client, config

from carpool_cluster.podrunner import PodProcess

LEASE_SECONDS = 40
TICK_SECONDS = 0.5
# Well inside the 10 s that `processes.stop` gives this process before SIGKILL.
SHUTDOWN_GRACE_SECONDS = 5.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def node_body(name: str, gpus: int) -> dict:
    now = _now().isoformat()
    return {
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "carpool.dev/process-kubelet": "true",
                "nvidia.com/gpu.present": "true",
            },
        },
        "status": {
            "capacity": {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": str(gpus)},
            "allocatable": {
                "cpu": "16",
                "memory": "64Gi",
                "pods": "110",
                "nvidia.com/gpu": str(gpus),
            },
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "process kubelet is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.37.2-process",
                "containerRuntimeVersion": "process://local",
                "architecture": "amd64",
                "operatingSystem": "linux",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": "",
                "osImage": "",
                "kubeProxyVersion": "",
            },
        },
    }


class ProcessKubelet:
    def __init__(self, api: client.ApiClient, nodes: list[str], gpus: int, root: Path) -> None:
        self.core = client.CoreV1Api(api)
        self.coordination = client.CoordinationV1Api(api)
        self.nodes, self.gpus, self.root = nodes, gpus, root
        self.server = api.configuration.host
        self.ca_file = api.configuration.ssl_ca_cert
        self.pods: dict[str, PodProcess] = {}
        # Each kubelet its own 127.S.0.0/16 (S from the process id), so clusters that run side
        # by side do not hand two pods the same address and port.
        subnet = 1 + os.getpid() % 250
        self._addresses = (f"127.{subnet}.{n // 250}.{n % 250 + 2}" for n in itertools.count())
        self.stopping = threading.Event()

    def register(self) -> None:
        for name in self.nodes:
            try:
                self.core.create_node(node_body(name, self.gpus))
            except client.ApiException as error:
                if error.status != 409:
                    raise
                self.core.patch_node_status(name, {"status": node_body(name, self.gpus)["status"]})
        self.heartbeat()

    def heartbeat(self) -> None:
        now = _now()
        for name in self.nodes:
            lease = {
                "metadata": {"name": name, "namespace": "kube-node-lease"},
                "spec": {
                    "holderIdentity": name,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                },
            }
            try:
                self.coordination.patch_namespaced_lease(name, "kube-node-lease", lease)
            except client.ApiException as error:
                if error.status != 404:
                    raise
                self.coordination.create_namespaced_lease("kube-node-lease", lease)
            ready = node_body(name, self.gpus)["status"]["conditions"]
            self.core.patch_node_status(name, {"status": {"conditions": ready}})

    def _bound_pods(self) -> dict[str, client.V1Pod]:
        found = {}
        for name in self.nodes:
            for pod in self.core.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={name}"
            ).items:
                found[f"{pod.metadata.namespace}/{pod.metadata.name}"] = pod
        return found

    def tick(self) -> None:
        bound = self._bound_pods()
        for key, running in list(self.pods.items()):
            pod = bound.get(key)
            if pod is None or pod.metadata.uid != running.pod.metadata.uid:
                running.stop(grace_seconds=2)
                del self.pods[key]
        for key, pod in bound.items():
            if pod.metadata.deletion_timestamp is not None:
                self._finish_deletion(key, pod)
            elif key not in self.pods:
                # New, or running before this kubelet restarted (its process died with it).
                self._start(key, pod)
        for key, running in self.pods.items():
            running.poll()
            self._report(running, bound.get(key))

    def _start(self, key: str, pod: client.V1Pod) -> None:
        address = next(self._addresses)
        running = PodProcess(
            pod,
            address,
            self.root / "pods" / pod.metadata.uid,
            self.core,
            self.server,
            self.ca_file,
        )
        try:
            running.prepare()
        except client.ApiException as error:  # a volume's ConfigMap or Secret is missing yet
            print(f"{key}: waiting for volumes: {error.reason}", flush=True)
            return
        running.start()
        self.pods[key] = running
        print(f"{key}: started on {pod.spec.node_name} at {address}", flush=True)

    def _finish_deletion(self, key: str, pod: client.V1Pod) -> None:
        running = self.pods.pop(key, None)
        if running is not None:
            running.stop(grace_seconds=float(pod.spec.termination_grace_period_seconds or 30))
        try:
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions={"uid": pod.metadata.uid}
                ),
            )
        except client.ApiException as error:
            if error.status not in (404, 409):
                raise
        print(f"{key}: stopped and removed", flush=True)

    def _report(self, running: PodProcess, pod: client.V1Pod | None) -> None:
        if pod is None:
            return
        all_ready = all(p.ready for p in running.containers)
        now = _now().isoformat()
        statuses = []
        for proc in running.containers:
            alive = proc.popen is not None and proc.popen.poll() is None
            state = (
                {"running": {"startedAt": running.started_at}}
                if alive
                else {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"exited with {proc.last_exit_code}",
                    }
                }
            )
            statuses.append(
                {
                    "name": proc.name,
                    "ready": proc.ready,
                    "started": alive,
                    "restartCount": proc.restarts,
                    "image": "process",
                    "imageID": "",
                    "state": state,
                }
            )
        ready = "True" if all_ready else "False"
        desired = {
            "phase": "Running",
            "podIP": running.pod_ip,
            "podIPs": [{"ip": running.pod_ip}],
            "hostIP": "127.0.0.1",
            "startTime": running.started_at,
            "containerStatuses": statuses,
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready},
                {"type": "Ready", "status": ready},
            ],
        }
        current = pod.status
        summary = (
            current.phase,
            current.pod_ip,
            [
                (c.ready, c.restart_count, bool(c.state and c.state.running))
                for c in current.container_statuses or []
            ],
        )
        wanted = (
            desired["phase"],
            desired["podIP"],
            [(s["ready"], s["restartCount"], "running" in s["state"]) for s in statuses],
        )
        if summary == wanted:
            return
        for condition in desired["conditions"]:
            condition["lastTransitionTime"] = now
        try:
            self.core.patch_namespaced_pod_status(
                pod.metadata.name, pod.metadata.namespace, {"status": desired}
            )
        except client.ApiException as error:
            if error.status != 404:
                raise

    def shutdown(self) -> None:
        # Every pod gets the same few seconds, together: stopping them one after another could
        # outlast the grace this process itself gets, and its pods (each in its own session)
        # would outlive it.
        for running in self.pods.values():
            running.terminate()
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for running in self.pods.values():
            running.finish(deadline)
        self.pods.clear()

    def run(self) -> None:
        self.register()
        last_heartbeat = time.monotonic()
        while not self.stopping.is_set():
            try:
                self.tick()
                if time.monotonic() - last_heartbeat > 10:
                    self.heartbeat()
                    last_heartbeat = time.monotonic()
            except Exception as error:  # the API server restarting must not kill the node
                detail = getattr(error, "body", "") or ""
                print(f"tick failed: {error!r} {detail}", flush=True)
            self.stopping.wait(TICK_SECONDS)
        self.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="carpool-process-kubelet")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=2)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--node-prefix", default="carpool-gpu")
    args = parser.parse_args(argv)
    api = config.new_client_from_config(config_file=args.kubeconfig)
    names = [f"{args.node_prefix}-{i}" for i in range(args.nodes)]
    kubelet = ProcessKubelet(api, names, args.gpus_per_node, args.root)
    signal.signal(signal.SIGTERM, lambda *_: kubelet.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: kubelet.stopping.set())
    kubelet.run()
    return 0


def start_daemon(state, nodes: int, gpus_per_node: int, name: str = "process-kubelet"):
    """Start the process kubelet for a control plane's ``state`` and record it there."""
    from carpool_cluster import processes

    root = Path(state.state_dir) / name
    record = processes.start(
        name,
        [
            sys.executable,
            "-m",
            "carpool_cluster.kubelet",
            "--kubeconfig",
            state.kubeconfig,
            "--nodes",
            str(nodes),
            "--gpus-per-node",
            str(gpus_per_node),
            "--root",
            root,
        ],
        Path(state.state_dir) / "logs" / f"{name}.log",
    )
    state.processes[name] = record
    state.save()
    return record


if __name__ == "__main__":
    sys.exit(main())
