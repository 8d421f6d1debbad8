"""What the wheel declares and ships: every third-party import is declared in pyproject.toml, and
every shipped module imports from the wheel's files alone (no repository file read at import).

Rules: a shipped package's module-level imports are declared in the base dependencies (the
worker's also in the ``worker`` extra); an import inside a function (optional tooling, such as
the prefill benchmark's transformers oracle) is declared in some extra; the tests' imports are
declared somewhere.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
WHEEL_PACKAGES = PROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
SHIPPED = {Path(p).name: REPO / p for p in WHEEL_PACKAGES}
EXTRAS_OF = {"carpool_worker": ("worker",)}


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalized as PEP 503 does."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group()
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(*extras: str, base: bool = True) -> set[str]:
    optional = PROJECT["project"]["optional-dependencies"]
    names = {_name(r) for r in PROJECT["project"]["dependencies"]} if base else set()
    return names | {_name(r) for extra in extras for r in optional[extra]}


def imports(source: str) -> tuple[set[str], set[str]]:
    """Top-level names of third-party candidates: (imported at module level, inside functions)."""
    tree = ast.parse(source)
    lazy_nodes = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for inner in ast.walk(node)
    }
    eager, lazy = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        tops = {n.split(".")[0] for n in names} - set(sys.stdlib_module_names)
        tops = {t for t in tops if not t.startswith("carpool_") and t not in ("tests", "e2e")}
        (lazy if id(node) in lazy_nodes else eager).update(tops)
    return eager, lazy


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()  # slow: it reads every installed distribution's files


def undeclared(modules: set[str], allowed: set[str]) -> dict[str, list[str]]:
    """The modules whose distribution is not in ``allowed`` (or not installed at all)."""
    distributions = _distributions()
    found = {}
    for module in sorted(modules):
        names = {_name(d) for d in distributions.get(module, [])}
        if not names & allowed:
            found[module] = sorted(names) or ["not installed"]
    return found


def sources(*folders: Path) -> dict[str, str]:
    return {
        str(path.relative_to(REPO)): path.read_text()
        for folder in folders
        for path in sorted(folder.rglob("*.py"))
    }


def test_an_undeclared_import_is_found():
    eager, _ = imports("import cryptography\nfrom yaml import safe_load\n")
    assert undeclared(eager, {"pyyaml"}) == {"cryptography": ["cryptography"]}


def test_an_import_inside_a_function_counts_as_lazy():
    eager, lazy = imports("import yaml\ndef f():\n    import transformers\n")
    assert (eager, lazy) == ({"yaml"}, {"transformers"})


@pytest.mark.parametrize("package", sorted(SHIPPED))
def test_module_level_imports_of_a_shipped_package_are_declared_for_it(package):
    allowed = declared(*EXTRAS_OF.get(package, ()))
    missing = {
        path: found
        for path, source in sources(SHIPPED[package]).items()
        if (found := undeclared(imports(source)[0], allowed))
    }
    assert not missing, f"declare these in pyproject.toml: {missing}"


def test_lazy_imports_of_shipped_packages_are_declared_in_some_extra():
    allowed = declared(*PROJECT["project"]["optional-dependencies"])
    missing = {
        path: found
        for path, source in sources(*SHIPPED.values()).items()
        if (found := undeclared(imports(source)[1], allowed))
    }
    assert not missing, f"declare these in pyproject.toml: {missing}"


def test_the_tests_import_only_declared_packages():
    allowed = declared(*PROJECT["project"]["optional-dependencies"])
    missing = {
        path: found
        for path, source in sources(REPO / "tests", REPO / "e2e").items()
        if (found := undeclared(set().union(*imports(source)), allowed))
    }
    assert not missing, f"declare these in pyproject.toml's dev extra: {missing}"


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> Path:
    """The shipped packages laid out as the wheel lays them out, and nothing else of the
    repository (the wheel's ``packages`` are copied whole)."""
    site = tmp_path_factory.mktemp("wheel") / "site-packages"
    for name, folder in SHIPPED.items():
        shutil.copytree(folder, site / name, ignore=shutil.ignore_patterns("__pycache__"))
    return site


def run_from(site: Path, *args: str) -> subprocess.CompletedProcess:
    # PYTHONPATH comes before the editable install's paths, so the copies are what is imported;
    # -P keeps the working directory off the path.
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run(
        [sys.executable, "-P", *args],
        cwd=site.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_shipped_module_imports_from_the_wheel_alone(wheel_files):
    modules = sorted(
        ".".join(path.relative_to(wheel_files).with_suffix("").parts).removesuffix(".__init__")
        for path in wheel_files.rglob("*.py")
    )
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    module = importlib.import_module(name)\n"
        f"    assert module.__file__.startswith({str(wheel_files)!r}), module.__file__\n"
    )
    result = run_from(wheel_files, "-c", probe)
    assert result.returncode == 0, result.stderr[-3000:]


def test_demo_outside_a_checkout_says_what_it_needs(wheel_files):
    result = run_from(wheel_files, "-m", "carpool_cli.main", "demo")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "runs from a checkout of the carpool repository" in result.stderr
    assert "crds" in result.stderr
