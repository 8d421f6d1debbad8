"""Fixtures: a real worker (tiny model, CPU) behind a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx
import pytest
import uvicorn

from carpool_worker.app import create_app
from carpool_worker.server import Worker, WorkerSettings, uvicorn_config

ADMIN_TOKEN = "s3cret-token"

LIMITS = {
    "version": 1,
    "defaultEndpoint": "interactive",
    "endpoints": {
        "interactive": {
            "priority": 100,
            "maxBatchSize": 4,
            "batchWindowMilliseconds": 0,
            "maxQueueWaitMilliseconds": 30000,
            "maxQueueLength": 64,
        },
        "batch": {
            "priority": 0,
            "maxBatchSize": 4,
            "batchWindowMilliseconds": 5,
            "maxQueueWaitMilliseconds": 30000,
            "maxQueueLength": 64,
        },
    },
}


def wait_for(condition, timeout: float = 20.0, interval: float = 0.02):
    """Polls ``condition`` until it returns something truthy; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class RunningServer:
    def __init__(self, worker: Worker):
        self.worker = worker
        # The same server and connection rules as `carpool worker`.
        config = uvicorn_config(
            worker, create_app(worker), "127.0.0.1", 0, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_for(lambda: self.server.started)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(self.url + "/readyz").status_code == 200, timeout=60)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def limits_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("limits") / "limits.json"
    path.write_text(json.dumps(LIMITS))
    return path


@pytest.fixture(scope="session")
def server(limits_file):
    settings = WorkerSettings(
        model="tiny",
        device="cpu",
        max_batch_size=8,
        max_context=256,
        limits_path=limits_file,
        limits_poll_seconds=0.05,
        admin_token=ADMIN_TOKEN,
        max_body_bytes=64 * 1024,
    )
    with RunningServer(Worker(settings)) as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}}" if want else name
    for line in text.splitlines():
        if line.startswith(prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def pytest_terminal_summary(terminalreporter):
    """Prints how many requests the fuzzer sent, by operation, so CI's log shows the count."""
    fuzz = sys.modules.get("tests.worker.test_http_fuzz")
    if fuzz is None or not fuzz.EXAMPLES_RUN:
        return
    runs = fuzz.EXAMPLES_RUN
    terminalreporter.write_sep("-", f"schemathesis: {sum(runs.values())} requests sent")
    for operation, count in sorted(runs.items()):
        terminalreporter.write_line(f"{count:6d}  {operation}")
