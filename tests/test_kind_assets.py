"""The kind assets in e2e/kind/ and the image build in images/ hold together, checked without
a container engine or a cluster (e2e/test_images.py builds and runs the images).

The scripts parse (``bash -n`` and ``shellcheck``); images/Containerfile builds only on the
debootstrap base, installs the wheel with the right extra, runs as the chart's user and bakes in
no secrets; the default image names agree with the chart; every repository path run.sh names
exists; and the in-cluster Prometheus scrapes like the local one
(cluster/carpool_cluster/prometheus.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest
import yaml

from carpool_cluster import prometheus

ROOT = Path(__file__).resolve().parents[1]
KIND = ROOT / "e2e" / "kind"
RUN_SH = KIND / "run.sh"
PYPROJECT = ROOT / "pyproject.toml"
CONTAINERFILE = ROOT / "images" / "Containerfile"
IGNOREFILE = ROOT / "images" / "Containerfile.dockerignore"
SCRIPTS = [ROOT / "images" / name for name in ("build.sh", "podman.sh", "install-requirements.sh")]


def containerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """images/Containerfile's stages by name: (INSTRUCTION, arguments) pairs, continuation
    lines joined, comments dropped; the ARGs before the first FROM under the name ""."""
    text = CONTAINERFILE.read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = stages[""]
    for line in joined.splitlines():
        if not line.strip():
            continue
        instruction, _, arguments = line.strip().partition(" ")
        instruction, arguments = instruction.upper(), " ".join(arguments.split())
        if instruction == "FROM":
            current = stages.setdefault(arguments.split(" AS ")[-1], [])
        current.append((instruction, arguments))
    return stages


def runs(stage: list[tuple[str, str]]) -> list[str]:
    return [arguments for instruction, arguments in stage if instruction == "RUN"]


def script_paths() -> dict[str, Path]:
    """Each ``NAME="$ROOT/..."`` or ``NAME="$HERE/..."`` assignment of run.sh, resolved."""
    bases = {"ROOT": ROOT, "HERE": KIND}
    pattern = re.compile(r'^([A-Z_]+)="\$(ROOT|HERE)/([^"$]+)"$', re.MULTILINE)
    return {
        name: bases[base] / relative for name, base, relative in pattern.findall(RUN_SH.read_text())
    }


@pytest.mark.parametrize("script", [RUN_SH, *SCRIPTS])
def test_scripts_parse(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", [RUN_SH, *SCRIPTS])
def test_scripts_pass_shellcheck(script: Path) -> None:
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_run_sh_is_strict_and_cleans_up() -> None:
    text = RUN_SH.read_text()
    assert "set -euo pipefail" in text
    assert "trap cleanup EXIT" in text
    assert "kind delete cluster" in text
    assert "CARPOOL_E2E_OPERATOR=chart" in text


def test_images_build_from_the_debootstrap_base_and_earlier_stages_only() -> None:
    stages = containerfile_stages()
    assert ("ARG", "BASE_IMAGE=localhost/carpool-base:bookworm") in stages[""]
    seen: list[str] = []
    for name, stage in list(stages.items())[1:]:
        base = stage[0][1].split(" AS ")[0]
        assert base == "${BASE_IMAGE}" or base in seen, (name, base)
        seen.append(name)
    assert {"operator", "worker"} <= set(seen)


@pytest.mark.parametrize(("target", "extras"), [("operator", []), ("worker", ["worker"])])
def test_images_install_the_wheel_with_the_right_extra(target: str, extras: list[str]) -> None:
    stage = containerfile_stages()[target]
    requirements = f"requirements-{target}.txt"
    assert ("COPY", f"--from=wheel /dist/{requirements} /tmp/build/") in stage
    (wheel_install,) = [r for r in runs(stage) if "carpool-*.whl" in r]
    assert ("[worker]" in wheel_install) == (extras == ["worker"])
    assert "pip check" in wheel_install
    (made,) = [r for r in runs(containerfile_stages()["wheel"])]
    command = f"python3 /src/images/requirements.py /src/pyproject.toml {' '.join(extras)}"
    assert f"{command.strip()} >/dist/{requirements}" in made


def test_requirements_are_the_dependencies_and_the_named_extras() -> None:
    def listed(*extras: str) -> list[str]:
        command = [sys.executable, str(ROOT / "images" / "requirements.py"), str(PYPROJECT)]
        result = subprocess.run([*command, *extras], check=True, capture_output=True, text=True)
        return result.stdout.splitlines()

    project = tomllib.loads(PYPROJECT.read_text())["project"]
    assert listed() == project["dependencies"]
    assert listed("worker") == project["dependencies"] + project["optional-dependencies"]["worker"]
    assert not any(line.startswith("torch") for line in listed())
    torch = listed("worker", "--only", "torch", "triton")
    assert [line.split(">")[0] for line in torch] == ["torch", "triton"]
    assert set(torch) <= set(listed("worker"))


def test_requirements_refuse_an_unknown_extra_or_project() -> None:
    script = [sys.executable, str(ROOT / "images" / "requirements.py"), str(PYPROJECT)]
    for extra_arguments, word in ((["gpu"], "no such extra"), (["--only", "torch"], "not among")):
        result = subprocess.run([*script, *extra_arguments], capture_output=True, text=True)
        assert result.returncode != 0 and word in result.stderr, result


def test_images_run_as_the_chart_user_and_bake_in_no_secrets() -> None:
    stages = containerfile_stages()
    for target in ("operator", "worker"):
        stage = stages[target]
        assert [a for i, a in stage if i == "USER"][-1] == "65532:65532", target
        assert ("ENTRYPOINT", '["carpool"]') in stage, target
        (command,) = [json.loads(a) for i, a in stage if i == "CMD"]
        assert command[0] == target
    secrets = ("TOKEN", "PASSWORD", "SECRET", "KUBECONFIG")
    for stage in stages.values():
        for instruction, arguments in stage:
            if instruction in ("ARG", "ENV"):
                assert not any(word in arguments.upper() for word in secrets), arguments
            # build.sh mounts the host's CA bundle for the build; it is never copied in.
            if instruction in ("COPY", "ADD"):
                assert ".crt" not in arguments and "ssl" not in arguments, arguments


def test_images_copy_what_the_wheel_is_built_from() -> None:
    pyproject = PYPROJECT.read_text()
    packages = re.findall(r'^\s*"(\w+)/carpool_\w+",$', pyproject, re.MULTILINE)
    assert packages
    copied = {
        arguments.split()[0]
        for instruction, arguments in containerfile_stages()["wheel"]
        if instruction == "COPY"
    }
    assert set(packages) <= copied
    # The ignore file lets through everything the COPYs name (and nothing is sent otherwise).
    copied |= {
        arguments.split()[0]
        for instruction, arguments in containerfile_stages()["python"]
        if instruction == "COPY"
    }
    admitted = set(re.findall(r"^!(\S+)$", IGNOREFILE.read_text(), re.MULTILINE))
    assert copied | {"README.md", "images/requirements.py"} <= admitted


def test_default_image_names_agree_with_the_chart() -> None:
    values = yaml.safe_load((ROOT / "charts" / "carpool" / "values.yaml").read_text())
    defaults = re.compile(r'^(OPERATOR|WORKER)_IMAGE="\$\{CARPOOL_\1_IMAGE:-([^"]+)\}"$', re.M)
    built = dict(defaults.findall((ROOT / "images" / "build.sh").read_text()))
    assert built["OPERATOR"] == values["operator"]["image"]["repository"] + ":$APP_VERSION"
    assert built["WORKER"].endswith(":$APP_VERSION")
    assert dict(defaults.findall(RUN_SH.read_text())) == built


def test_every_file_the_script_names_exists() -> None:
    paths = script_paths()
    expected = {
        "CRDS": ROOT / "crds",
        "CHART": ROOT / "charts" / "carpool",
        "KIND_CONFIG": KIND / "kind-config.yaml",
        "PROMETHEUS_MANIFEST": KIND / "prometheus.yaml",
        "BUILD_IMAGES": ROOT / "images" / "build.sh",
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
