"""schemathesis against the worker's own OpenAPI document: every generated request, valid or
not, gets a status the document lists and never a 5xx, and the worker serves afterwards.

The run is bounded (``MAX_EXAMPLES`` per operation, derandomized so CI sees the same cases) and
its count is printed at the end of the pytest run (conftest.py).
"""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from carpool_replica.limits import MAX_FIELD_VALUE
from carpool_worker.app import create_app
from carpool_worker.server import Worker, WorkerSettings

from .conftest import ADMIN_TOKEN, LIMITS, RunningServer, wait_for

MAX_EXAMPLES = 60
OK = {"prompt": "hi", "max_tokens": 4, "temperature": 0}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,  # what the document calls invalid is refused with a 4xx
]
# "operation (mode) -> status" -> requests sent; conftest.py prints it at the end of the run.
EXAMPLES_RUN: Counter[str] = Counter()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A worker of its own: the fuzzer changes its limits through the admin API."""
    limits = tmp_path_factory.mktemp("limits") / "limits.json"
    limits.write_text(json.dumps(LIMITS))
    with RunningServer(Worker(worker_settings(limits))) as running:
        yield running


def worker_settings(limits_path=None) -> WorkerSettings:
    return WorkerSettings(
        model="tiny",
        device="cpu",
        max_batch_size=8,
        max_context=128,
        limits_path=limits_path,
        admin_token=ADMIN_TOKEN,
        max_body_bytes=64 * 1024,
    )


# The document the worker serves, built at collection without loading a model (Worker() is
# cheap), so each operation is a test of its own.
SCHEMA = schemathesis.openapi.from_dict(
    create_app(Worker(worker_settings()), load_on_startup=False).openapi()
)
OPERATIONS = {op.label: op for op in (r.ok() for r in SCHEMA.get_all_operations())}


# Invalid requests exist only where there is something to get wrong: a body or a parameter.
CASES = [
    (label, mode)
    for label, op in sorted(OPERATIONS.items())
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or op.body or op.headers or op.query
]


def test_every_openai_route_is_fuzzed():
    assert {
        "POST /v1/completions",
        "POST /v1/chat/completions",
        "GET /v1/models",
        "GET /v1/models/{model}",
    } <= set(OPERATIONS)


@pytest.mark.parametrize(("label", "mode"), CASES, ids=[f"{op}-{m.value}" for op, m in CASES])
def test_fuzzed_request_gets_a_documented_status_and_never_a_5xx(fuzzed, label, mode):
    operation = OPERATIONS[label]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if "/admin/" in label else {}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        response = case.call_and_validate(
            base_url=fuzzed.url, headers=headers, checks=CHECKS, timeout=30
        )
        EXAMPLES_RUN[f"{label} ({mode.value}) -> {response.status_code}"] += 1

    run()
    # Whatever limits the fuzzer left in force, the newest version puts sane ones back.
    restore = LIMITS | {"version": MAX_FIELD_VALUE}
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert httpx.put(fuzzed.url + "/admin/limits", json=restore, headers=auth).status_code == 200
    assert httpx.post(fuzzed.url + "/v1/completions", json=OK, timeout=30).status_code == 200
    # Nothing is left holding a slot or waiting for one.
    scheduler = fuzzed.worker.engine.scheduler
    wait_for(lambda: not scheduler.running and not scheduler.has_waiting)
