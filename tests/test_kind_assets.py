"""The kind assets in e2e/kind/ hold together, checked without Docker or a cluster.

The script parses (``bash -n``, and ``shellcheck`` where installed), the Dockerfiles build
the ``carpool`` command with the right extra, every repository path the script names exists,
and the in-cluster Prometheus scrapes like the local one (cluster/carpool_cluster/prometheus.py).
"""

from __future__ import annotations

import re
import subprocess
import types
from pathlib import Path

import pytest
import yaml

from carpool_cluster import prometheus

ROOT = Path(__file__).resolve().parents[1]
KIND = ROOT / "e2e" / "kind"
RUN_SH = KIND / "run.sh"


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (KIND / name).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    found = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, arguments = line.strip().partition(" ")
            found.append((instruction.upper(), arguments.strip()))
    return found


def script_paths() -> dict[str, Path]:
    """Each ``NAME="$ROOT/..."`` or ``NAME="$HERE/..."`` assignment of run.sh, resolved."""
    bases = {"ROOT": ROOT, "HERE": KIND}
    pattern = re.compile(r'^([A-Z_]+)="\$(ROOT|HERE)/([^"$]+)"$', re.MULTILINE)
    return {
        name: bases[base] / relative for name, base, relative in pattern.findall(RUN_SH.read_text())
    }


def test_run_sh_parses() -> None:
    subprocess.run(["bash", "-n", str(RUN_SH)], check=True)


def test_run_sh_passes_shellcheck() -> None:
    result = subprocess.run(["shellcheck", str(RUN_SH)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_run_sh_is_strict_and_cleans_up() -> None:
    text = RUN_SH.read_text()
    assert "set -euo pipefail" in text
    assert "trap cleanup EXIT" in text
    assert "kind delete cluster" in text
    assert "CARPOOL_E2E_OPERATOR=chart" in text


@pytest.mark.parametrize(
    ("dockerfile", "install"),
    [("Dockerfile.operator", "pip install ."), ("Dockerfile.worker", 'pip install ".[worker]"')],
)
def test_dockerfiles_install_carpool_with_the_right_extra(dockerfile: str, install: str) -> None:
    instructions = dockerfile_instructions(dockerfile)
    runs = [arguments for instruction, arguments in instructions if instruction == "RUN"]
    installs = [r for r in runs if "pip install" in r]
    assert len(installs) == 1
    assert installs[0].startswith(install + " ") or installs[0] == install
    if dockerfile == "Dockerfile.operator":
        assert "[worker]" not in installs[0]
    assert ("FROM", "python:3.11-slim") in instructions
    assert ("ENTRYPOINT", '["carpool"]') in instructions
    user = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    secrets = ("TOKEN", "PASSWORD", "SECRET", "KUBECONFIG")
    for instruction, arguments in instructions:
        if instruction in ("ARG", "ENV"):
            assert not any(word in arguments.upper() for word in secrets), arguments


def test_dockerfiles_copy_what_the_wheel_is_built_from() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.findall(r'^\s*"(\w+)/carpool_\w+",$', pyproject, re.MULTILINE)
    assert packages
    for dockerfile in ("Dockerfile.operator", "Dockerfile.worker"):
        copied = {
            arguments.split()[0]
            for instruction, arguments in dockerfile_instructions(dockerfile)
            if instruction == "COPY"
        } | {"README.md"}
        assert set(packages) <= copied, dockerfile


def test_every_file_the_script_names_exists() -> None:
    paths = script_paths()
    expected = {
        "CRDS": ROOT / "crds",
        "CHART": ROOT / "charts" / "carpool",
        "KIND_CONFIG": KIND / "kind-config.yaml",
        "PROMETHEUS_MANIFEST": KIND / "prometheus.yaml",
        "OPERATOR_DOCKERFILE": KIND / "Dockerfile.operator",
        "WORKER_DOCKERFILE": KIND / "Dockerfile.worker",
    }
    assert expected.items() <= paths.items()
    for name, path in paths.items():
        assert path.exists(), f"{name}: {path}"
    assert list((ROOT / "crds").glob("*.yaml"))
    assert (ROOT / "charts" / "carpool" / "Chart.yaml").is_file()


def test_chart_image_keys_the_script_sets_exist() -> None:
    values = yaml.safe_load((ROOT / "charts" / "carpool" / "values.yaml").read_text())
    text = RUN_SH.read_text()
    for key in re.findall(r"--set \"?(operator\.[\w.]+)=", text):
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, key
            node = node[part]


def test_kind_prometheus_scrapes_like_the_local_one() -> None:
    documents = list(yaml.safe_load_all((KIND / "prometheus.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    kind_job = yaml.safe_load(config_map["data"]["prometheus.yml"])["scrape_configs"][0]
    state = types.SimpleNamespace(
        server="https://127.0.0.1:6443", ca_file="ca", prometheus_cert="c", prometheus_key="k"
    )
    local_job = prometheus.scrape_config(state)["scrape_configs"][0]
    assert kind_job["relabel_configs"] == local_job["relabel_configs"]
    for key in ("job_name", "honor_labels", "fallback_scrape_protocol"):
        assert kind_job[key] == local_job[key], key
    assert kind_job["kubernetes_sd_configs"] == [{"role": "pod"}]
