"""`carpool bench serve` against an emulated GPU worker (bench-8b's H200 profile), and its capacity
rule and figures on synthetic results."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from carpool_bench import fidelity, serve
from carpool_bench.replay import Arrival, Outcome
from carpool_cli.main import main as carpool
from carpool_replica.profile import Profile
from carpool_sim.trace import load_azure_csv

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "h200-bench-8b.json"
TRACE = REPO / "traces" / "azure-llm-2023-code.csv"


@pytest.fixture(scope="module")
def worker_url():
    profile = Profile.from_dict(json.loads(PROFILE.read_text()))
    with fidelity.emulated_worker(PROFILE, profile) as url:
        yield url


def test_a_sweep_prints_and_writes_every_rates_figures_and_the_capacity(
    worker_url, tmp_path, capsys
):
    # 2 req/s is light for bench-8b's 2k-token prompts; 1,000 req/s sends all 16 at once, and
    # their prefills queue behind each other far past 400 ms; 2,000 req/s is skipped.
    out = tmp_path / "serve.json"
    status = carpool(
        ["bench", "serve", "--url", worker_url, "--trace", str(TRACE), "--rates", "1000,2,2000",
         "--requests", "16", "--seconds", "30", "--max-prompt-tokens", "2048",
         "--sla-ttft-ms", "400", "--stop-after-miss", "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    print(printed)
    assert status == 0
    lines = printed.splitlines()
    assert lines[0] == "# goodput at TTFT <= 400 ms"
    assert lines[1].split()[:4] == ["offered/s", "sent", "done", "achieved/s"]
    assert [line.split()[0] for line in lines[2:4]] == ["2", "1000"]  # ascending
    assert lines[4:] == [
        "# 1000 req/s missed the SLA: the higher rates are skipped (--stop-after-miss)",
        "capacity at p95 TTFT <= 400 ms: 2 req/s (1000 req/s missed)",
    ]

    document = json.loads(out.read_text())
    assert document["max_prompt_tokens"] == 2048
    assert document["capacity"] == {
        "capacity_rps": 2.0, "bound": "exact", "first_missed_rps": 1000.0, "passed_above": []
    }  # fmt: skip
    low, high = document["rates"]
    for row in (low, high):
        assert row["sent"] == row["completed"] == 16
        assert row["status_429"] == row["errors"] == row["unfinished"] == 0
        assert 0 < row["ttft_p50_seconds"] <= row["ttft_p95_seconds"] <= row["ttft_p99_seconds"]
        # bench-8b decodes in about 5 to 10 ms a step on the profile's H200
        assert 0.002 < row["itl_p95_seconds"] < 0.1
        assert row["output_tokens_per_second"] > 0
        assert 0 < row["goodput_rps"] <= row["achieved_rps"]
    assert low["ttft_p95_within_sla"] and low["ttft_p95_seconds"] <= 0.4
    assert not high["ttft_p95_within_sla"] and high["ttft_p95_seconds"] > 0.4
    assert high["goodput_rps"] < high["achieved_rps"]
    # Open loop: 16 arrivals at 2 req/s span about 8 s, whatever the worker does.
    assert low["makespan_seconds"] > 4


def row(rate: float, passed: bool) -> dict:
    return {"offered_rps": rate, "ttft_p95_within_sla": passed}


@pytest.mark.parametrize(
    ("rows", "expected", "line"),
    [
        ([row(1, True), row(2, True), row(4, False), row(8, False)],
         {"capacity_rps": 2, "bound": "exact", "first_missed_rps": 4, "passed_above": []},
         "2 req/s (4 req/s missed)"),
        ([row(4, True), row(1, True), row(2, True)],
         {"capacity_rps": 4, "bound": "at_least", "passed_above": []},
         "at least 4 req/s (the highest rate swept passed)"),
        ([row(1, False), row(2, False)],
         {"capacity_rps": None, "bound": "below", "below_rps": 1, "passed_above": []},
         "below 1 req/s (even the lowest rate swept missed)"),
        # A pass above a miss is noise or recovery: the capacity stops at the first miss.
        ([row(1, True), row(2, False), row(4, True)],
         {"capacity_rps": 1, "bound": "exact", "first_missed_rps": 2, "passed_above": [4]},
         "1 req/s (2 req/s missed); 4 req/s passed after a miss, not counted"),
        ([row(1, False), row(2, True)],
         {"capacity_rps": None, "bound": "below", "below_rps": 1, "passed_above": [2]},
         "below 1 req/s (even the lowest rate swept missed); 2 req/s passed after a miss, "
         "not counted"),
        ([], {"capacity_rps": None, "bound": "none", "passed_above": []}, "no rates measured"),
    ],
)  # fmt: skip
def test_capacity_is_the_highest_rate_below_the_first_miss(rows, expected, line):
    result = serve.capacity(rows)
    assert result == expected
    assert serve.capacity_line(result, 1.0) == f"capacity at p95 TTFT <= 1000 ms: {line}"


def outcome(sent: float, ttft: float | None, status: int = 200, tokens: int = 5) -> Outcome:
    arrival = Arrival(sent, "default", 100, tokens)
    if ttft is None:
        return Outcome(arrival, sent, None, sent + 0.01, status)
    times = [sent + ttft + 0.01 * i for i in range(tokens)]
    return Outcome(arrival, sent, times[0], times[-1], status, token_times=times,
                   output_tokens=tokens)  # fmt: skip


def test_figures_count_requests_without_a_first_token_as_infinitely_late():
    fast = [outcome(float(i), 0.1) for i in range(17)]
    slow = [outcome(17.0, 2.0), outcome(18.0, 2.0)]
    shed = [outcome(19.0, None, status=429)]
    figures = serve.rate_figures(1.0, 21, [*fast, *slow, *shed], 1.0, 60.0)  # one unfinished
    assert figures["completed"] == 19
    assert (figures["status_429"], figures["errors"], figures["unfinished"]) == (1, 0, 1)
    assert figures["ttft_p50_seconds"] == pytest.approx(0.1)
    # 2 of 21 without a first token is over 5%: p95 and p99 are infinite, the rate misses.
    assert figures["ttft_p95_seconds"] is None and figures["ttft_p99_seconds"] is None
    assert not figures["ttft_p95_within_sla"]
    assert figures["itl_p95_seconds"] == pytest.approx(0.01)
    makespan = 60.0  # one request was unfinished: the rate ran until its deadline
    assert figures["makespan_seconds"] == pytest.approx(makespan, abs=1e-3)
    assert figures["achieved_rps"] == pytest.approx(19 / makespan, abs=1e-3)
    assert figures["goodput_rps"] == pytest.approx(17 / makespan, abs=1e-3)
    assert figures["output_tokens_per_second"] == pytest.approx(19 * 5 / makespan, abs=1e-2)
    assert "inf" in serve.table_row(figures).split()


def test_one_error_in_forty_keeps_p95_finite():
    ok = [outcome(float(i), 0.2) for i in range(39)]
    figures = serve.rate_figures(1.0, 40, [*ok, outcome(39.0, None, status=500)], 1.0, 60.0)
    assert figures["errors"] == 1 and figures["unfinished"] == 0
    assert figures["error_statuses"] == {"500": 1}
    # Nothing unfinished: from the first send to the last completion (38.24) or send (39).
    assert figures["makespan_seconds"] == pytest.approx(39.0)
    assert figures["ttft_p95_seconds"] == pytest.approx(0.2)
    assert figures["ttft_p99_seconds"] is None
    assert figures["ttft_p95_within_sla"]


def test_the_token_mix_depends_on_the_rate_and_seed_alone_and_keeps_its_bounds():
    trace = load_azure_csv(TRACE, "default")
    a = serve.token_mix(trace, 4.0, 30.0, 50, seed=3, max_prompt_tokens=1000)
    assert a == serve.token_mix(trace, 4.0, 30.0, 50, seed=3, max_prompt_tokens=1000)
    assert a != serve.token_mix(trace, 4.0, 30.0, 50, seed=4, max_prompt_tokens=1000)
    assert len(a) == 50 and max(r.prompt_tokens for r in a) == 1000
    assert all(x.arrival_seconds <= y.arrival_seconds for x, y in zip(a, a[1:], strict=False))
    few = serve.token_mix(trace, 0.5, 10.0, 1000, seed=3, max_prompt_tokens=8192)
    assert len(few) < 20 and all(r.arrival_seconds < 10.0 for r in few)
    assert math.isclose(serve.nearest_rank([3.0, 1.0, 2.0], 50), 2.0)


def test_a_bad_rate_list_exits_2(capsys):
    assert carpool(["bench", "serve", "--url", "http://127.0.0.1:1", "--rates", "0,1"]) == 2
    assert "--rates" in capsys.readouterr().err


def test_the_transformers_peer_serves_the_token_mix_on_cpu(tmp_path):
    """bench/hf_serve_peer.py, the GPU peer, end to end on a 2-layer model: 4 requests."""
    out = tmp_path / "peer.json"
    result = subprocess.run(
        [sys.executable, "bench/hf_serve_peer.py", "--model", "tiny", "--device", "cpu",
         "--rates", "2", "--requests", "4", "--max-prompt-tokens", "256",
         "--sla-ttft-ms", "5000", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    print(result.stdout, result.stderr[-2000:])
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert "# goodput at TTFT <= 5000 ms" in lines
    assert "capacity at p95 TTFT <= 5000 ms: at least 2 req/s" in result.stdout
    document = json.loads(out.read_text())
    assert json.loads(lines[-1]) == document
    assert document["token_times"] == "record_timestamps"
    (row,) = document["rates"]
    assert row["sent"] == row["completed"] == 4 and row["unfinished"] == row["errors"] == 0
    assert 0 < row["ttft_p50_seconds"] <= row["ttft_p95_seconds"] < 5
    assert row["itl_p95_seconds"] > 0 and row["output_tokens_per_second"] > 0
