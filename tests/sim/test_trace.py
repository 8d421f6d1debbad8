"""Recorded traces: the Azure CSV reader and the time-axis transformations."""

from __future__ import annotations

import pytest

from carpool_sim.trace import Request, TraceError, load_azure_csv, loop_to, scale_rate

CSV = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:17:03.9799600,4808,10
2023-11-16 18:17:04.4799600,110,0
2023-11-16 18:17:05.9799600,3180,8
"""


def write(tmp_path, text):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_azure_csv_times_are_relative_to_the_first_request(tmp_path):
    trace = load_azure_csv(write(tmp_path, CSV), "code")
    assert [r.arrival_seconds for r in trace] == pytest.approx([0.0, 0.5, 2.0])
    assert (trace[0].endpoint, trace[0].prompt_tokens, trace[0].output_tokens) == ("code", 4808, 10)


def test_a_request_generates_at_least_one_token(tmp_path):
    trace = load_azure_csv(write(tmp_path, CSV), "code")
    assert trace[1].output_tokens == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("when,prompt,output\n", "line 1: expected the header"),
        (CSV + "2023-11-16 18:17:06.0,many,3\n", "line 5: cannot read"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
    ],
)
def test_unreadable_csv_names_the_line(tmp_path, text, message):
    with pytest.raises(TraceError, match=message):
        load_azure_csv(write(tmp_path, text), "code")


def test_rate_scale_compresses_the_time_axis():
    trace = [Request("a", t, 10, 1) for t in (0.0, 3.0, 9.0)]
    assert [r.arrival_seconds for r in scale_rate(trace, 3.0)] == [0.0, 1.0, 3.0]


def test_loop_repeats_the_trace_every_period_until_the_duration():
    trace = [Request("a", t, 10, 1) for t in (0.0, 4.0)]
    looped = loop_to(trace, duration_seconds=12.0, period_seconds=5.0)
    assert [r.arrival_seconds for r in looped] == [0.0, 4.0, 5.0, 9.0, 10.0]
