"""The repository layout keeps its promises: no stdlib shadowing, one CLI for every part."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_operator_is_the_standard_library_even_from_the_repo_root() -> None:
    probe = "import operator; print(operator.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded_from = Path(result.stdout.strip()).parent
    assert loaded_from == Path(sysconfig.get_paths()["stdlib"])


@pytest.mark.parametrize("subcommand", ["cluster", "operator", "worker", "profile", "sim", "bench"])
def test_every_subcommand_answers_help(subcommand: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "carpool_cli.main", subcommand, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


def test_unknown_subcommand_is_refused_with_the_list() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "carpool_cli.main", "fly"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "unknown subcommand 'fly'" in result.stderr
    assert "sim" in result.stderr
