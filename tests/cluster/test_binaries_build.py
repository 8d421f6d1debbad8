"""Building a pinned binary: a build into a cache folder that does not exist yet (a fresh
machine) makes it, and two builds of the same binary at once (a test run beside a CI run,
sharing the cache) both succeed and leave one whole binary. `go` is a stand-in script here: what
is tested is how the output is moved into place, not the compiler."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from carpool_cluster import binaries

SLOW_BUILD = """#!/bin/sh
# go build -trimpath -o OUT ...: write OUT slowly, as a real build would take a while.
while [ "$1" != "-o" ]; do shift; done
sleep 0.3
echo built > "$2"
"""
FAILED_BUILD = "#!/bin/sh\necho 'compile error' >&2\nexit 1\n"


@pytest.fixture
def fake_go(tmp_path, monkeypatch):
    """Put a `go` running `script` first on PATH."""

    def install(script: str) -> None:
        tools = tmp_path / "tools"
        tools.mkdir()
        go = tools / "go"
        go.write_text(script)
        go.chmod(go.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")

    return install


def twice_at_once(build: Callable[[], object]) -> list[BaseException]:
    """Run `build` in two threads at once; what either raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            build()
        except BaseException as error:  # noqa: BLE001 - returned to the test's assertion
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_two_builds_of_one_binary_at_once_both_succeed(tmp_path, fake_go):
    fake_go(SLOW_BUILD)
    target = tmp_path / "bin" / "tool"
    target.parent.mkdir()
    assert (
        twice_at_once(lambda: binaries._go_build(target, ["example.com/tool"], tmp_path, "tool"))
        == []
    )
    assert target.read_text() == "built\n"
    assert [p.name for p in target.parent.iterdir()] == ["tool"]  # no half-built file left


def test_a_failed_build_leaves_nothing_behind(tmp_path, fake_go):
    fake_go(FAILED_BUILD)
    target = tmp_path / "tool"
    with pytest.raises(binaries.BuildError, match="compile error"):
        binaries._go_build(target, ["example.com/tool"], tmp_path, "tool")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tools"]
    assert not target.exists()


def test_a_build_on_a_fresh_machine_makes_its_folder(tmp_path, fake_go):
    fake_go(SLOW_BUILD)
    target = tmp_path / "cache" / "bin" / "kubernetes-v1" / "tool"
    binaries._go_build(target, ["example.com/tool"], tmp_path, "tool")
    assert target.read_text() == "built\n"


def test_two_processes_building_at_once_resolve_modules_in_folders_of_their_own(
    tmp_path, fake_go, monkeypatch
):
    """Go rewrites go.mod and go.sum where it builds: two builds sharing that folder would
    rewrite each other's. Each build runs in a folder of its own, removed when it is done."""
    log = tmp_path / "cwd.log"
    fake_go('#!/bin/sh\npwd >> "$CWD_LOG"\n' + SLOW_BUILD.split("\n", 1)[1])
    monkeypatch.setenv("CWD_LOG", str(log))
    cache = tmp_path / "cache"
    monkeypatch.setenv("CARPOOL_CACHE_DIR", str(cache))
    assert twice_at_once(binaries.ensure_binaries) == []
    work_folders = {Path(line).relative_to(cache).parts[0] for line in log.read_text().split()}
    assert len(work_folders) == 2, work_folders
    assert sorted(p.name for p in cache.iterdir()) == ["bin"]  # nothing left but the binaries
    assert all(p.read_text() == "built\n" for p in binaries.expected().as_dict().values())
