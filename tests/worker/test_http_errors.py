"""Every malformed request gets a 4xx JSON error naming the problem, and loses nothing."""

from __future__ import annotations

import json
import logging
import socket

import httpx
import pytest

from .conftest import ADMIN_TOKEN, metric_value, wait_for

OK = {"prompt": "hi", "max_tokens": 4, "temperature": 0}

CASES = [
    # (case, raw body, headers, status, a word the message must hold)
    ("bad_json", b'{"prompt": "hi",', {}, 400, "JSON"),
    ("not_an_object", b"[1, 2, 3]", {}, 400, "object"),
    ("missing_prompt", b'{"max_tokens": 3}', {}, 400, "prompt"),
    ("empty_prompt", b'{"prompt": ""}', {}, 400, "prompt"),
    ("prompt_wrong_type", b'{"prompt": {"a": 1}}', {}, 400, "prompt"),
    ("two_prompts", b'{"prompt": ["a", "b"]}', {}, 400, "only one prompt per request"),
    ("two_token_prompts", b'{"prompt": [[1], [2]]}', {}, 400, "only one prompt per request"),
    ("token_outside_vocabulary", b'{"prompt": [1, 999999]}', {}, 400, "vocabulary"),
    ("negative_token", b'{"prompt": [-5]}', {}, 400, "vocabulary"),
    ("prompt_longer_than_context", b'{"prompt": "' + b"x" * 400 + b'"}', {}, 400, "context"),
    (
        "prompt_plus_max_tokens_over_context",
        b'{"prompt": "hi", "max_tokens": 255}',
        {},
        400,
        "context",
    ),
    ("negative_max_tokens", b'{"prompt": "hi", "max_tokens": -1}', {}, 400, "max_tokens"),
    ("absurd_max_tokens", b'{"prompt": "hi", "max_tokens": 1e300}', {}, 400, "max_tokens"),
    (
        "huge_int_max_tokens",
        b'{"prompt": "hi", "max_tokens": ' + b"9" * 400 + b"}",
        {},
        400,
        "max_tokens",
    ),
    ("string_max_tokens", b'{"prompt": "hi", "max_tokens": "5"}', {}, 400, "max_tokens"),
    ("negative_temperature", b'{"prompt": "hi", "temperature": -1}', {}, 400, "temperature"),
    ("nan_temperature", b'{"prompt": "hi", "temperature": NaN}', {}, 400, "NaN"),
    ("infinite_top_p", b'{"prompt": "hi", "top_p": Infinity}', {}, 400, "Infinity"),
    ("zero_top_p", b'{"prompt": "hi", "top_p": 0}', {}, 400, "top_p"),
    ("top_p_zero_on_the_device", b'{"prompt": "hi", "top_p": 1e-300}', {}, 400, "top_p"),
    (
        "temperature_zero_on_the_device",
        b'{"prompt": "hi", "temperature": 1e-300}',
        {},
        400,
        "temperature",
    ),
    ("logprobs_asked_for", b'{"prompt": "hi", "logprobs": 5}', {}, 400, "logprobs"),
    ("echo_asked_for", b'{"prompt": "hi", "echo": true}', {}, 400, "echo"),
    (
        "penalty_asked_for",
        b'{"prompt": "hi", "presence_penalty": 0.5}',
        {},
        400,
        "presence_penalty",
    ),
    ("unknown_field", b'{"prompt": "hi", "colour": "red"}', {}, 400, "colour"),
    ("model_not_a_string", b'{"prompt": "hi", "model": 7}', {}, 400, "model"),
    ("too_many_stops", b'{"prompt": "hi", "stop": ["a","b","c","d","e"]}', {}, 400, "stop"),
    ("n_two", b'{"prompt": "hi", "n": 2}', {}, 400, "n must be 1"),
    ("stream_not_bool", b'{"prompt": "hi", "stream": "yes"}', {}, 400, "stream"),
    ("lone_surrogate", b'{"prompt": "a\\ud800b"}', {}, 400, "surrogate"),
    ("invalid_utf8", b'{"prompt": "\xff\xfe"}', {}, 400, "JSON"),
    ("deeply_nested", b"[" * 100000 + b"]" * 100000, {}, 413, "larger"),
    ("nested_under_limit", b"[" * 20000 + b"]" * 20000, {}, 400, ""),
    ("huge_body", b'{"prompt": "' + b"x" * 200_000 + b'"}', {}, 413, "larger"),
    ("unknown_endpoint", b'{"prompt": "hi"}', {"X-Carpool-Endpoint": "nope"}, 404, "nope"),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "word"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_completion_request_gets_4xx_json(client, body, headers, status, word):
    r = client.post(
        "/v1/completions", content=body, headers={"content-type": "application/json"} | headers
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert word in error["message"]
    assert error["code"] == status


def test_server_still_serves_after_bad_requests(client):
    for body, headers, *_ in [c[1:] for c in CASES]:
        client.post("/v1/completions", content=body, headers=headers)
    assert client.post("/v1/completions", json=OK).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/nowhere", 404), ("GET", "/v1/completions", 405), ("DELETE", "/admin/limits", 405)],
)
def test_unknown_route_or_method_gets_json(client, method, path, status):
    r = client.request(method, path)
    assert r.status_code == status
    assert r.json()["error"]["code"] == status


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", "/v1/completions", {"POST"}), ("DELETE", "/admin/limits", {"GET", "PUT"})],
)
def test_wrong_method_names_the_allowed_ones(client, method, path, allowed):
    r = client.request(method, path)
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} == allowed


def test_null_max_tokens_means_the_default(client):
    r = client.post("/v1/completions", json=OK | {"max_tokens": None})
    assert r.status_code == 200, r.text
    assert 1 <= r.json()["usage"]["completion_tokens"] <= 16


def test_openai_fields_at_their_neutral_values_are_accepted(client):
    neutral = {
        "logprobs": None,
        "echo": False,
        "best_of": 1,
        "presence_penalty": 0.0,
        "frequency_penalty": 0,
        "logit_bias": {},
        "model": "tiny",
        "user": "someone",
        "n": None,
        "stream": None,
    }
    r = client.post("/v1/completions", json=OK | neutral)
    assert r.status_code == 200, r.text


def test_refused_field_is_named_in_param(client):
    r = client.post("/v1/completions", json=OK | {"logprobs": 1})
    assert r.json()["error"]["param"] == "logprobs"


def raw_exchange(server, request: bytes) -> str:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):  # the server closes after an error it sends itself
            chunks.append(chunk)
    return b"".join(chunks).decode()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    ],
    ids=["request_line", "content_length_not_a_number", "two_content_lengths", "header_line"],
)
def test_request_that_is_not_http_gets_a_json_400(server, client, request_bytes):
    reply = raw_exchange(server, request_bytes)
    head, _, body = reply.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 400")
    assert "content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["code"] == 400
    assert client.post("/v1/completions", json=OK).status_code == 200


def test_prompt_too_long_for_the_context_counts_as_invalid_not_error(client):
    def counts():
        text = client.get("/metrics").text
        return tuple(
            metric_value(text, "carpool_requests_total", endpoint="interactive", outcome=o)
            for o in ("invalid", "error")
        )

    invalid, error = counts()
    r = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 255})
    assert r.status_code == 400
    assert counts() == (invalid + 1, error)


@pytest.fixture
def worker_logs(caplog):
    """Records of the worker's and uvicorn's loggers (uvicorn's do not reach the root logger)."""
    caplog.set_level(logging.INFO, logger="carpool_worker")
    uvicorn_error = logging.getLogger("uvicorn.error")
    uvicorn_error.addHandler(caplog.handler)
    yield caplog
    uvicorn_error.removeHandler(caplog.handler)


def test_client_leaving_mid_body_is_one_log_line_and_counted(server, client, worker_logs):
    def dropped():
        text = client.get("/metrics").text
        return metric_value(
            text, "carpool_http_requests_dropped_total", reason="client_disconnected"
        )

    before = dropped()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt": '
        )
    wait_for(lambda: dropped() == before + 1)
    lines = [r for r in worker_logs.records if "before sending its whole body" in r.getMessage()]
    assert len(lines) == 1
    assert all(r.exc_info is None for r in worker_logs.records)


def test_declared_oversize_body_is_refused_unread(server):
    # A raw socket: HTTP clients refuse to send a Content-Length they cannot honour.
    reply = raw_exchange(
        server,
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 99999999999\r\n\r\n{}",
    )
    assert reply.startswith("HTTP/1.1 413")
    assert '"code":413' in reply


def running_total(client) -> float:
    text = client.get("/metrics").text
    return sum(
        metric_value(text, "carpool_requests_running", endpoint=e) or 0
        for e in ("interactive", "batch")
    )


def test_client_disconnect_mid_stream_frees_the_slot(server, client):
    engine = server.worker.engine
    body = {"prompt": "stream me", "max_tokens": 200, "temperature": 0, "stream": True}
    # Leaving the block closes the connection mid-stream.
    with (
        httpx.Client(base_url=server.url, timeout=30) as other,
        other.stream("POST", "/v1/completions", json=body) as r,
    ):
        lines = r.iter_lines()
        wait_for(lambda: next(lines).startswith("data: "))
        assert engine.scheduler.running  # the request holds a slot while we read
    wait_for(lambda: not engine.scheduler.running)
    wait_for(lambda: running_total(client) == 0)
    assert client.post("/v1/completions", json=OK).status_code == 200


def test_client_disconnect_while_waiting_for_whole_response_frees_the_slot(server, client):
    engine = server.worker.engine
    body = {"prompt": "long one", "max_tokens": 240, "temperature": 0}
    # 240 tokens take ~150 ms or more on the tiny model (one step ~0.6 ms): the client gives up
    # well before the answer is ready.
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", json=body, timeout=0.03)
    wait_for(lambda: not engine.scheduler.running)


AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": ADMIN_TOKEN},
        {"Authorization": "Basic " + ADMIN_TOKEN},
    ],
    ids=["no_header", "wrong_token", "no_scheme", "wrong_scheme"],
)
def test_admin_limits_without_the_token_is_401(client, headers):
    r = client.put("/admin/limits", json={"version": 99}, headers=headers)
    assert r.status_code == 401
    assert "token" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"endpoints": {}}, "version"),
        ({"version": "7", "endpoints": {}}, "version"),
        ({"version": 9, "endpoints": {}}, "endpoints"),
        ({"version": 9, "endpoints": {"a": {"priority": 1}}}, "endpoints.a.maxBatchSize"),
        (
            {
                "version": 9,
                "endpoints": {
                    "a": {
                        "priority": -1,
                        "maxBatchSize": 1,
                        "batchWindowMilliseconds": 0,
                        "maxQueueWaitMilliseconds": 0,
                        "maxQueueLength": 0,
                    }
                },
            },
            "endpoints.a.priority",
        ),
        (
            {
                "version": 9,
                "endpoints": {
                    "a": {
                        "priority": 1,
                        "maxBatchSize": 0,
                        "batchWindowMilliseconds": 0,
                        "maxQueueWaitMilliseconds": 0,
                        "maxQueueLength": 0,
                    }
                },
            },
            "endpoints.a.maxBatchSize",
        ),
        (
            {
                "version": 9,
                "defaultEndpoint": "b",
                "endpoints": {
                    "a": {
                        "priority": 1,
                        "maxBatchSize": 1,
                        "batchWindowMilliseconds": 0,
                        "maxQueueWaitMilliseconds": 0,
                        "maxQueueLength": 0,
                    }
                },
            },
            "defaultEndpoint",
        ),
    ],
    ids=[
        "no_version",
        "string_version",
        "no_endpoints",
        "missing_field",
        "negative",
        "zero_batch",
        "unknown_default",
    ],
)
def test_malformed_limits_get_400_naming_the_field(client, doc, field):
    r = client.put("/admin/limits", json=doc, headers=AUTH)
    assert r.status_code == 400
    assert field in r.json()["error"]["message"]


def test_limits_with_bad_json_get_400(client):
    r = client.put("/admin/limits", content=b"{nope", headers=AUTH)
    assert r.status_code == 400


def test_endpoint_with_a_full_queue_answers_429_with_retry_after(server, client):
    doc = server.worker.engine.limits.as_dict()
    doc["version"] += 1
    doc["endpoints"]["closed"] = {
        "priority": 0,
        "maxBatchSize": 1,
        "batchWindowMilliseconds": 0,
        "maxQueueWaitMilliseconds": 1000,
        "maxQueueLength": 0,
    }
    assert client.put("/admin/limits", json=doc, headers=AUTH).status_code == 200
    r = client.post("/v1/completions", json=OK, headers={"X-Carpool-Endpoint": "closed"})
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert "maxQueueLength" in r.json()["error"]["message"]
