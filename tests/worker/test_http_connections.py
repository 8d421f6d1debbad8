"""Connection hygiene: slow, silent and surplus connections are answered and closed in bounded
time, and a valid request is served promptly while many of them are held.

Every socket here goes to the test's own server on 127.0.0.1; the counts are bounded and every
test closes what it opened.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time

import httpx
import pytest

from carpool_worker.server import Worker, WorkerSettings

from .conftest import LIMITS, RunningServer, metric_value, wait_for

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 1.0
KEEP_ALIVE = 1.0
MAX_CONNECTIONS = 256
STALLED = 200  # held at once by the slow-client test, below MAX_CONNECTIONS
# The demo's interactive SLA is 500 ms to the first token; a whole 4-token answer on two shared
# cores gets twice that.
SLA_SECONDS = 1.0
OK = {"prompt": "hi", "max_tokens": 4, "temperature": 0}
PARTIAL_HEADERS = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    limits = tmp_path_factory.mktemp("limits") / "limits.json"
    limits.write_text(json.dumps(LIMITS))
    settings = WorkerSettings(
        model="tiny",
        device="cpu",
        max_batch_size=8,
        max_context=256,
        limits_path=limits,
        header_timeout_seconds=HEADER_TIMEOUT,
        body_timeout_seconds=BODY_TIMEOUT,
        keep_alive_seconds=KEEP_ALIVE,
        max_connections=MAX_CONNECTIONS,
    )
    with RunningServer(Worker(settings)) as running:
        yield running


def address(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def server_metric(server, name: str, **labels: str) -> float:
    # Read in process: over the connection bound, /metrics itself would be refused.
    return metric_value(server.worker.metrics.render().decode(), name, **labels) or 0.0


def open_connections(server) -> float:
    return server_metric(server, "carpool_http_connections")


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    sock.settimeout(limit)
    started, chunks = time.monotonic(), []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks), time.monotonic() - started


def assert_json_error(reply: bytes, status: int) -> None:
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()), reply
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == status


@contextlib.contextmanager
def held(server, count: int, first_bytes: bytes = b""):
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address(server), timeout=10)
            socks.append(sock)
            if first_bytes:
                sock.sendall(first_bytes)
        yield socks
    finally:
        for sock in socks:
            sock.close()
        wait_for(lambda: open_connections(server) == 0, timeout=HEADER_TIMEOUT + 10)


def test_valid_request_is_served_promptly_while_many_clients_stall(server):
    with held(server, STALLED, PARTIAL_HEADERS):
        wait_for(lambda: open_connections(server) >= STALLED)
        started = time.monotonic()
        r = httpx.post(server.url + "/v1/completions", json=OK, timeout=10)
        elapsed = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert elapsed < SLA_SECONDS
        assert open_connections(server) >= STALLED  # they were all still held meanwhile


def test_client_that_never_finishes_its_headers_gets_408_and_is_closed(server):
    before = server_metric(server, "carpool_http_requests_dropped_total", reason="header_timeout")
    with held(server, 1, PARTIAL_HEADERS) as (sock,):
        reply, took = read_until_closed(sock, HEADER_TIMEOUT + 10)
    assert_json_error(reply, 408)
    assert took < HEADER_TIMEOUT + 2
    after = server_metric(server, "carpool_http_requests_dropped_total", reason="header_timeout")
    assert after == before + 1


def test_client_that_sends_nothing_is_closed_after_the_header_timeout(server):
    with held(server, 1) as (sock,):
        reply, took = read_until_closed(sock, HEADER_TIMEOUT + 10)
    assert_json_error(reply, 408)
    assert took < HEADER_TIMEOUT + 2


def test_second_request_on_a_kept_alive_connection_has_the_same_header_deadline(server):
    body = json.dumps(OK).encode()
    request = PARTIAL_HEADERS + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    with held(server, 1, request) as (sock,):
        sock.settimeout(10)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(PARTIAL_HEADERS)  # keeps the keep-alive timer from closing it
        reply, took = read_until_closed(sock, HEADER_TIMEOUT + 10)
    assert b"HTTP/1.1 408" in reply
    assert took < HEADER_TIMEOUT + 2


def test_body_that_stalls_gets_408_and_is_closed(server):
    before = server_metric(server, "carpool_http_requests_dropped_total", reason="body_timeout")
    with held(server, 1, PARTIAL_HEADERS + b'Content-Length: 100\r\n\r\n{"prompt": ') as (sock,):
        reply, took = read_until_closed(sock, BODY_TIMEOUT + 10)
    assert_json_error(reply, 408)
    assert took < BODY_TIMEOUT + 2
    after = server_metric(server, "carpool_http_requests_dropped_total", reason="body_timeout")
    assert after == before + 1


def test_idle_keep_alive_connection_is_closed(server):
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/v1/completions", json=OK).status_code == 200
        assert open_connections(server) == 1
        started = time.monotonic()
        wait_for(lambda: open_connections(server) == 0, timeout=KEEP_ALIVE + 10)
    assert time.monotonic() - started < KEEP_ALIVE + 2


def test_connection_past_the_bound_gets_a_json_503_and_the_worker_recovers(server):
    with held(server, MAX_CONNECTIONS):
        wait_for(lambda: open_connections(server) >= MAX_CONNECTIONS)
        r = httpx.post(server.url + "/v1/completions", json=OK, timeout=10)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == 503
        assert int(r.headers["retry-after"]) >= 1
    assert httpx.post(server.url + "/v1/completions", json=OK, timeout=10).status_code == 200
