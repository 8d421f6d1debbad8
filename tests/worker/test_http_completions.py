"""POST /v1/completions, health and metrics against a real server with the tiny model."""

from __future__ import annotations

import json

import pytest

from .conftest import metric_value, wait_for

GREEDY = {"prompt": "The quick brown fox", "max_tokens": 12, "temperature": 0}


def test_completion_returns_text_and_usage(client):
    r = client.post("/v1/completions", json=GREEDY)
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] in ("length", "stop")
    assert isinstance(choice["text"], str)
    assert body["usage"]["completion_tokens"] >= 1
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


def test_stream_sends_the_same_text_as_one_response(client):
    whole = client.post("/v1/completions", json=GREEDY).json()["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json=GREEDY | {"stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")


def test_token_id_prompt_is_accepted(client):
    r = client.post("/v1/completions", json={"prompt": [256, 72, 105], "max_tokens": 3})
    assert r.status_code == 200
    assert r.json()["usage"]["prompt_tokens"] == 3


def test_stop_string_cuts_the_text(client):
    text = client.post("/v1/completions", json=GREEDY | {"max_tokens": 30}).json()["choices"][0][
        "text"
    ]
    # The tiny model's weights are seeded, so greedy text is the same on every run.
    assert len(text) >= 4, f"too little text to pick a stop string from: {text!r}"
    stop = text[2:4]
    r = client.post("/v1/completions", json=GREEDY | {"max_tokens": 30, "stop": [stop]})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == text[: text.find(stop)]


def test_endpoint_header_routes_to_that_endpoint(client):
    before = metric_value(
        client.get("/metrics").text, "carpool_requests_total", endpoint="batch", outcome="ok"
    )
    r = client.post("/v1/completions", json=GREEDY, headers={"X-Carpool-Endpoint": "batch"})
    assert r.status_code == 200
    after = metric_value(
        client.get("/metrics").text, "carpool_requests_total", endpoint="batch", outcome="ok"
    )
    assert after == before + 1


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    "name",
    [
        "carpool_queue_wait_seconds_bucket",
        "carpool_time_to_first_token_seconds_bucket",
        "carpool_inter_token_latency_seconds_bucket",
        "carpool_request_duration_seconds_bucket",
        "carpool_requests_total",
        "carpool_generated_tokens_total",
        "carpool_prompt_tokens_total",
        "carpool_requests_waiting",
        "carpool_requests_running",
        "carpool_batch_size_bucket",
        "carpool_step_duration_seconds_bucket",
        "carpool_kv_cache_usage_ratio",
        "carpool_batch_limit",
        "carpool_limits_version",
    ],
)
def test_metrics_expose(client, name):
    client.post("/v1/completions", json=GREEDY)
    text = client.get("/metrics").text
    assert any(line.startswith(name) for line in text.splitlines())


def test_latency_buckets_resolve_5ms_to_30s(client):
    text = client.get("/metrics").text
    bounds = sorted(
        float(line.split('le="')[1].split('"')[0])
        for line in text.splitlines()
        if line.startswith("carpool_time_to_first_token_seconds_bucket")
        and 'endpoint="interactive"' in line
        and "+Inf" not in line
    )
    assert bounds[0] <= 0.005 and bounds[-1] >= 30
    inside = [b for b in bounds if 0.004 <= b <= 31]
    assert all(hi / lo <= 1.3 for lo, hi in zip(inside, inside[1:], strict=False))


def test_generated_tokens_counted(client):
    def generated():
        return metric_value(
            client.get("/metrics").text, "carpool_generated_tokens_total", endpoint="interactive"
        )

    before = generated() or 0
    n = client.post("/v1/completions", json=GREEDY).json()["usage"]["completion_tokens"]
    wait_for(lambda: generated() == before + n)
