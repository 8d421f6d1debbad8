"""The process kubelet's shutdown ends every pod process within the grace it is given itself.

`processes.stop` SIGKILLs the kubelet's process group 10 s after SIGTERM, and pod processes run
in their own sessions, so a pod still running when the kubelet dies outlives it. Real processes
that ignore SIGTERM stand in for slow-stopping workers; the API client is never called.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from kubernetes import client

from carpool_cluster.kubelet import ProcessKubelet
from carpool_cluster.podrunner import ContainerProcess, PodProcess

STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
PARENT_GRACE_SECONDS = 10.0  # processes.stop's default


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_shutdown_ends_every_pod_within_the_kubelets_own_grace(tmp_path: Path) -> None:
    api = client.ApiClient()  # never used: no pod is prepared from the API here
    kubelet = ProcessKubelet(api, ["node"], 2, tmp_path)
    for index in range(3):
        pod = client.V1Pod(metadata=client.V1ObjectMeta(name=f"stubborn-{index}", namespace="ns"))
        running = PodProcess(pod, "127.0.0.1", tmp_path, client.CoreV1Api(api), "", "")
        running.containers.append(
            ContainerProcess(
                name="main",
                argv=[sys.executable, "-c", STUBBORN],
                env={},
                log=tmp_path / f"stubborn-{index}.log",
                readiness=None,
                ports={},
            )
        )
        running.start()
        kubelet.pods[running.key] = running
    pids = [c.popen.pid for p in kubelet.pods.values() for c in p.containers]
    time.sleep(0.5)  # let each one install its SIGTERM handler
    assert all(alive(pid) for pid in pids)

    started = time.monotonic()
    kubelet.shutdown()
    took = time.monotonic() - started

    assert not any(alive(pid) for pid in pids)
    assert took < PARENT_GRACE_SECONDS, f"shutdown took {took:.1f}s, past the kubelet's grace"
