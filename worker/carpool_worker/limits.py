"""The worker's limits file: read once at start, then polled for ConfigMap updates.

Contract: ``read_limits_file(path)`` parses a file through :mod:`carpool_replica.limits` (the
one parser of the limits document). ``LimitsFileWatcher`` polls a file's content (not inotify: a
Kubernetes ConfigMap volume updates by swapping a symlink, which inotify on the file never
reports) and hands each new document to a callback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

from carpool_replica.limits import (
    EndpointLimits,
    LimitsDocument,
    LimitsError,
    default_limits,
    parse_limits,
)

__all__ = [
    "EndpointLimits",
    "LimitsDocument",
    "LimitsError",
    "LimitsFileWatcher",
    "default_limits",
    "parse_limits",
    "read_limits_file",
]

log = logging.getLogger(__name__)


def read_limits_file(path: Path) -> LimitsDocument:
    try:
        obj = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise LimitsError(f"{path} is not valid JSON: {exc}") from exc
    return parse_limits(obj)


class LimitsFileWatcher:
    """Polls ``path`` every ``interval`` seconds and calls ``apply(doc)`` when its content changes.

    Reading the content (through the symlink, as a ConfigMap mount presents it) rather than
    watching the file with inotify is what catches ConfigMap updates: the kubelet writes a new
    timestamped directory and swaps the ``..data`` symlink, so the file we opened never changes.
    A malformed or unreadable file is logged and the limits in force stay.
    """

    def __init__(self, path: Path, apply, interval: float = 1.0):
        self.path = Path(path)
        self.apply = apply
        self.interval = interval
        self._digest: bytes | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="limits-watcher", daemon=True)

    def check_once(self) -> bool:
        """Reads the file; applies it if its content is new. True when something was applied."""
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            log.warning("limits file %s unreadable: %s", self.path, exc)
            return False
        digest = hashlib.sha256(raw).digest()
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            doc = parse_limits(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, LimitsError) as exc:
            log.error("limits file %s rejected, keeping the limits in force: %s", self.path, exc)
            return False
        return bool(self.apply(doc))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_once()
            except Exception:  # the watcher must outlive any surprise; the next poll retries
                log.exception("limits watcher")
