"""`carpool sim suite --short` on the scenarios folder: the table's structure and the invariants
every variant must hold. Not carpool's goal numbers: those are the full suite's result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from carpool_sim.cli import main
from carpool_sim.suite import run_suite
from carpool_sim.suite_report import goals, markdown, spread_rows, variant_label
from carpool_sim.suite_scenario import load_scenario_file

from .conftest import POOL_YAML, PROFILE

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = {
    ("hpa-gpu", "default"), ("hpa-gpu", "tuned"), ("keda-queue", "default"),
    ("keda-queue", "tuned"), ("kpa", "default"), ("kpa", "tuned"), ("static", "hindsight"),
    ("clairvoyant", "bound"), ("carpool", "policy"),
}  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "suite.json"
    code = main(["suite", "--scenarios", str(ROOT / "scenarios"), "--short", "--json", str(out)])
    assert code == 0
    return json.loads(out.read_text())


def rows(result):
    return {(r["policy"], r["kind"]): r for r in result["rows"]}


def test_every_scenario_file_is_a_variant(results):
    names = {path.stem for path in (ROOT / "scenarios").glob("*.yaml")}
    assert sorted(r["scenario"] for r in results) == sorted(names)


def test_the_whole_day_runs_from_its_own_folder(tmp_path):
    # The uncompressed day is kept out of the suite's folder (its budget), so nothing else
    # would notice it rot: its first 300 s, every policy, from the command its header gives.
    out = tmp_path / "day.json"
    day = ROOT / "scenarios" / "day"
    assert main(["suite", "--scenarios", str(day), "--short", "--json", str(out)]) == 0
    [result] = json.loads(out.read_text())
    assert result["scenario"] == "diurnal-24h"
    assert set(rows(result)) == EXPECTED


def test_every_variant_has_every_policy(results):
    for result in results:
        assert set(rows(result)) == EXPECTED, result["scenario"]


def test_every_run_resolves_every_request(results):
    for result in results:
        for row in result["rows"]:
            assert row["resolved"], (result["scenario"], row["policy"], row["kind"])


def test_every_endpoint_with_requests_has_an_attainment(results):
    for result in results:
        for row in result["rows"]:
            for name, count in result["requests"].items():
                share = row["attainment"][name]
                assert (share is None) == (count == 0)
                assert share is None or 0.0 <= share <= 1.0


def test_the_clairvoyant_bound_never_costs_more_than_static(results):
    for result in results:
        by = rows(result)
        assert by["clairvoyant", "bound"]["gpu_hours"] <= by["static", "hindsight"]["gpu_hours"]


def test_the_clairvoyant_bound_reaches_the_target_where_static_does(results):
    for result in results:
        by = rows(result)
        if by["static", "hindsight"]["reached"]:
            assert by["clairvoyant", "bound"]["reached"], result["scenario"]


def test_tuned_never_costs_more_than_the_default_when_both_reach(results):
    for result in results:
        by = rows(result)
        for policy in ("hpa-gpu", "keda-queue", "kpa"):
            default, tuned = by[policy, "default"], by[policy, "tuned"]
            if default["reached"]:
                assert tuned["reached"]
                assert tuned["gpu_hours"] <= default["gpu_hours"], (result["scenario"], policy)


def test_static_is_the_fewest_replicas_that_reach_the_target(results):
    for result in results:
        count, runs = result["static_replicas"], result["static_runs"]
        assert runs[str(count)]["reached"], result["scenario"]
        if count > 1:
            assert not runs[str(count - 1)]["reached"], result["scenario"]


def test_the_cheapest_reaching_baseline_is_the_cheapest(results):
    for result in results:
        reaching = [r["gpu_hours"] for r in result["rows"]
                    if r["reached"] and r["kind"] in ("default", "tuned", "hindsight")]  # fmt: skip
        if reaching:
            assert result["cheapest"]["gpu_hours"] == min(reaching)
            carpool = rows(result)["carpool", "policy"]["gpu_hours"]
            assert result["carpool"]["vs_cheapest"] == pytest.approx(carpool / min(reaching))


def test_an_unreachable_sla_lowers_the_target_to_the_reachable_share(results):
    result = next(r for r in results if r["scenario"] == "unreachable-sla")
    reachable = result["reachable"]["long-context"]
    assert 0.9 < reachable < 0.99
    assert result["targets"]["long-context"] == pytest.approx(0.99 * reachable)


def test_the_markdown_has_a_row_per_policy_and_variant(results):
    lines = [line for line in markdown(results).splitlines() if line.startswith("| ")]
    # Two header rows, one summary row per variant, one row per policy and variant.
    assert len(lines) == 2 + len(results) + len(results) * len(EXPECTED)


def test_seeds_run_each_variant_on_several_sample_paths_and_report_their_spread(tmp_path):
    (tmp_path / "pool.yaml").write_text(POOL_YAML)
    (tmp_path / "profile.json").write_text(json.dumps(PROFILE))
    (tmp_path / "s.yaml").write_text(
        "name: small\npool: pool.yaml\nprofile: profile.json\nduration_seconds: 120\n"
        "seed: 5\ntraffic: {chat: 'poisson:rate=2'}\n"
    )
    file = load_scenario_file(tmp_path / "s.yaml")
    results = run_suite([file], short=True, processes=1, seeds=2)
    assert [r["seed"] for r in results] == [5, 6]
    assert [variant_label(r) for r in results] == ["small x1", "small x1 seed 6"]
    assert results[0]["requests"] != results[1]["requests"]  # another sample path
    (row,) = spread_rows(results)
    assert row[:2] == ["small x1", "5, 6"]
    assert row[2].endswith("of 2")
    assert spread_rows(results[:1]) == []  # one path: no spread to report


def test_routing_runs_every_policy_behind_the_pools_service_and_says_so(tmp_path):
    (tmp_path / "pool.yaml").write_text(POOL_YAML)
    (tmp_path / "profile.json").write_text(json.dumps(PROFILE))
    folder = tmp_path / "scenarios"
    folder.mkdir()
    (folder / "s.yaml").write_text(
        "name: small\npool: ../pool.yaml\nprofile: ../profile.json\nduration_seconds: 120\n"
        "seed: 5\ntraffic: {chat: 'poisson:rate=20,prompt=800,output=20'}\n"
    )
    out = tmp_path / "suite.json"
    assert main(["suite", "--scenarios", str(folder), "--short", "--json", str(out),
                 "--processes", "1", "--routing", "random"]) == 0  # fmt: skip
    (service,) = json.loads(out.read_text())
    (gateway,) = run_suite([load_scenario_file(folder / "s.yaml")], short=True, processes=1)
    assert (service["routing"], gateway["routing"]) == ("random", "least-request")
    assert variant_label(service) == "small x1 (random routing)"
    assert variant_label(gateway) == "small x1"
    # Per-pod queues need at least the pods one pooled queue needs.
    assert service["static_replicas"] >= gateway["static_replicas"]
    assert service["rows"] != gateway["rows"]


def test_a_cost_miss_by_a_hair_prints_its_digits_not_one():
    """A ratio of 1.0004 is a miss; "cost 1.00x" would read as a goal met, listed anyway."""

    def result(vs_cheapest: float) -> dict:
        carpool = {"reached": True, "vs_cheapest": vs_cheapest}
        carpool.update(vs_clairvoyant=1.0, vs_static=1.0)
        return {"cheapest": {}, "carpool": carpool, "rows": []}

    assert goals(result(1.0004)) == ["cost 1.0004x"]
    assert goals(result(1.25)) == ["cost 1.25x"]
    assert goals(result(1.0)) == []
