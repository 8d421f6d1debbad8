"""Scenario files: what they hold, how rate scale and --short change a run, what they refuse."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from carpool_sim.scenario import ScenarioError
from carpool_sim.suite_scenario import load_folder, load_scenario_file

from .conftest import POOL_YAML


@pytest.fixture
def folder(tmp_path, pool_file, profile_file):
    """A folder with the test pool and profile beside a two-line trace."""
    (tmp_path / "trace.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:00.0,100,10\n"
        "2023-11-16 18:17:50.0,200,20\n"
    )
    return tmp_path


def write(folder, body: str, name: str = "s.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


BASE = """
pool: pool.yaml
profile: profile.json
duration_seconds: 600
seed: 3
"""


def test_a_recorded_trace_at_twice_the_rate_doubles_its_requests(folder):
    scenario = load_scenario_file(write(folder, BASE + "traffic: {chat: trace.csv}\n"))
    # Twice as many loops of the compressed trace (each loop's span is rounded up to 1 s).
    ratio = len(scenario.build(2.0).requests) / len(scenario.build(1.0).requests)
    assert ratio == pytest.approx(2.0, rel=0.05)


def test_a_pattern_at_twice_the_rate_about_doubles_its_requests(folder):
    scenario = load_scenario_file(write(folder, BASE + "traffic: {chat: 'poisson:rate=5'}\n"))
    ratio = len(scenario.build(2.0).requests) / len(scenario.build(1.0).requests)
    assert ratio == pytest.approx(2.0, rel=0.1)


def test_a_short_run_keeps_one_whole_envelope_swing(folder):
    rows = [f"2023-11-16 18:17:{t // 10:02d}.{t % 10},100,10" for t in range(600)]
    (folder / "dense.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows))
    envelope = "{low: 1, high: 3, period_seconds: 600}"
    body = BASE + f"traffic:\n  chat: {{trace: dense.csv, envelope: {envelope}}}\n"
    short = load_scenario_file(write(folder, body)).build(1.0, 60.0)
    times = np.array([r.arrival_seconds for r in short.requests])
    # Ten requests a second, 3x at the peak: half a period into the 60 s run, not at 300 s.
    peak = np.sum(np.abs(times - 30.0) < 5.0) / 10.0
    start = np.sum(times < 10.0) / 10.0
    assert peak > 2 * start


def test_the_profile_s_context_can_be_set_per_scenario(folder):
    body = BASE.replace("profile: profile.json", "profile: {path: profile.json, max_seq_len: 2048}")
    scenario = load_scenario_file(write(folder, body + "traffic: {chat: trace.csv}\n"))
    assert scenario.profile.max_seq_len == 2048


def test_an_inline_pool_is_read_like_a_pool_file(folder):
    inline = textwrap.indent(POOL_YAML, "  ")
    body = BASE.replace("pool: pool.yaml", "pool:" + inline)
    scenario = load_scenario_file(write(folder, body + "traffic: {chat: trace.csv}\n"))
    assert [e.name for e in scenario.spec.endpoints] == ["chat", "batch"]


def test_the_same_file_builds_the_same_requests(folder):
    scenario = load_scenario_file(write(folder, BASE + "traffic: {chat: 'poisson:rate=3'}\n"))
    assert scenario.build(1.5).requests == scenario.build(1.5).requests


def test_another_seed_draws_another_sample_path_of_the_same_traffic(folder):
    scenario = load_scenario_file(write(folder, BASE + "traffic: {chat: 'poisson:rate=3'}\n"))
    assert scenario.build(1, seed=3).requests == scenario.build(1).requests  # the file's seed
    other = scenario.build(1, seed=4).requests
    assert other != scenario.build(1).requests
    # The same traffic: about the same number of requests (1,800 expected in 600 s).
    assert abs(len(other) - len(scenario.build(1).requests)) < 300


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (BASE, "traffic: required"),
        (BASE + "traffic: {nope: trace.csv}\n", "the pool has no such endpoint"),
        (BASE + "traffic: {chat: trace.csv}\ncolour: red\n", "unknown field colour"),
        (BASE.replace("profile.json", "missing.json") + "traffic: {chat: trace.csv}\n",
         "profile missing.json"),
        (BASE + "traffic: {chat: 'poisson:rate=1,lengths=zipf'}\n", "traffic chat"),
        (BASE + "traffic: {chat: {trace: trace.csv, envelope: {low: 1}}}\n", "envelope"),
        (BASE + "traffic: {chat: trace.csv}\nrate_scales: [0]\n", "rate_scales"),
        (BASE + "traffic: {chat: trace.csv}\nsla_target: 1.5\n", "sla_target"),
    ],
)  # fmt: skip
def test_a_bad_file_is_refused_naming_the_file_and_field(folder, body, message):
    path = write(folder, body)
    with pytest.raises(ScenarioError, match=message) as error:
        load_scenario_file(path)
    assert str(path) in str(error.value)


def test_a_missing_trace_is_refused_when_built(folder):
    scenario = load_scenario_file(write(folder, BASE + "traffic: {chat: gone.csv}\n"))
    with pytest.raises(ScenarioError, match="gone.csv"):
        scenario.build(1.0)


def test_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(ScenarioError, match="no scenario files"):
        load_folder(tmp_path)
