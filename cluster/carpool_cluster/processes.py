"""Start, find and stop the local daemons; pick free loopback ports; wait for health.

Contract: ``start()`` launches a command in its own process group with stdout and stderr
appended to a log file and returns a ``ProcessRecord`` that can be saved as JSON. ``stop()``
ends exactly that process group (TERM, then KILL after a grace period) and only if the pid
still runs the recorded executable, so a recycled pid is never killed. ``wait_until()``
polls a predicate with a deadline and raises ``StartupError`` with the log's tail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# Processes started by this Python process: asking their Popen is exact, whereas /proc can
# briefly show nothing while a child is between fork and exec.
_STARTED_HERE: dict[int, subprocess.Popen] = {}


class StartupError(RuntimeError):
    """A daemon did not start or become healthy; the message says which and why."""


@dataclasses.dataclass
class ProcessRecord:
    name: str
    pid: int
    executable: str
    log: str
    port: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> ProcessRecord:
        return cls(**data)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start(
    name: str,
    argv: Sequence[str | os.PathLike],
    log: Path,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> ProcessRecord:
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [str(a) for a in argv]
    with log.open("ab") as sink:
        sink.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
        sink.flush()
        proc = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,  # its own process group: stop() ends it and its children
        )
    _STARTED_HERE[proc.pid] = proc
    return ProcessRecord(name=name, pid=proc.pid, executable=command[0], log=str(log), port=port)


def _running_executable(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    if state == "Z":
        return None
    return raw.split(b"\0", 1)[0].decode(errors="replace")


def is_running(record: ProcessRecord) -> bool:
    own = _STARTED_HERE.get(record.pid)
    if own is not None:
        return own.poll() is None
    return _running_executable(record.pid) == record.executable


def stop(record: ProcessRecord, grace_seconds: float = 10.0) -> bool:
    """Stop the recorded process group; return True if something was running."""
    if not is_running(record):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and is_running(record):
        _reap(record.pid)
        time.sleep(0.1)
    if is_running(record):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, signal.SIGKILL)
    _reap(record.pid)
    return True


def _reap(pid: int) -> None:
    # Children of this Python process become zombies until waited for.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def log_tail(log: str | Path, lines: int = 25) -> str:
    try:
        return "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until(
    what: str,
    predicate: Callable[[], bool],
    timeout_seconds: float,
    record: ProcessRecord | None = None,
    interval_seconds: float = 0.25,
) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if record is not None and not is_running(record):
            raise StartupError(
                f"{record.name} exited while waiting for {what}; last log lines "
                f"({record.log}):\n{log_tail(record.log)}"
            )
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(interval_seconds)
    tail = f"; last log lines ({record.log}):\n{log_tail(record.log)}" if record else ""
    raise StartupError(f"timed out after {timeout_seconds:.0f}s waiting for {what}{tail}")
