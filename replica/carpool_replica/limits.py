"""The limits document (docs/interfaces.md): one endpoint's five run-time limits, parsed.

Contract: ``parse_limits(obj)`` returns a :class:`LimitsDocument` or raises
:class:`LimitsError` whose message names the offending field. ``default_limits(slots)`` is what
a worker runs with when given no limits file: one endpoint, ``default``. Pure: the worker's file
watcher and the simulator both build documents through this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

FIELDS = (
    "priority",
    "maxBatchSize",
    "batchWindowMilliseconds",
    "maxQueueWaitMilliseconds",
    "maxQueueLength",
)
# Far beyond any sane setting, small enough that arithmetic on them stays exact and cheap.
MAX_FIELD_VALUE = 2**31 - 1


class LimitsError(ValueError):
    """A malformed limits document; the message names the field."""


@dataclass(frozen=True)
class EndpointLimits:
    priority: int
    max_batch_size: int
    batch_window_ms: int
    max_queue_wait_ms: int
    max_queue_length: int

    def as_dict(self) -> dict[str, int]:
        return {
            "priority": self.priority,
            "maxBatchSize": self.max_batch_size,
            "batchWindowMilliseconds": self.batch_window_ms,
            "maxQueueWaitMilliseconds": self.max_queue_wait_ms,
            "maxQueueLength": self.max_queue_length,
        }


@dataclass(frozen=True)
class LimitsDocument:
    version: int
    default_endpoint: str
    endpoints: dict[str, EndpointLimits]

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "defaultEndpoint": self.default_endpoint,
            "endpoints": {name: lim.as_dict() for name, lim in self.endpoints.items()},
        }


def _int_field(value: Any, where: str, minimum: int) -> int:
    # bool is an int in Python; a limit of `true` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise LimitsError(f"{where} must be an integer, got {json.dumps(value)}")
    if not minimum <= value <= MAX_FIELD_VALUE:
        raise LimitsError(f"{where} must be between {minimum} and {MAX_FIELD_VALUE}, got {value}")
    return value


def parse_limits(obj: Any) -> LimitsDocument:
    if not isinstance(obj, dict):
        raise LimitsError("the limits document must be a JSON object")
    if "version" not in obj:
        raise LimitsError("version is required")
    version = _int_field(obj["version"], "version", 0)
    endpoints_obj = obj.get("endpoints")
    if not isinstance(endpoints_obj, dict) or not endpoints_obj:
        raise LimitsError("endpoints must be a non-empty object of endpoint name -> limits")
    endpoints: dict[str, EndpointLimits] = {}
    for name, spec in endpoints_obj.items():
        if not name or len(name) > 253:
            raise LimitsError(f"endpoints: the name {name!r} must be 1 to 253 characters")
        where = f"endpoints.{name}"
        if not isinstance(spec, dict):
            raise LimitsError(f"{where} must be an object")
        unknown = set(spec) - set(FIELDS)
        if unknown:
            raise LimitsError(f"{where}.{sorted(unknown)[0]} is not a known field")
        for field in FIELDS:
            if field not in spec:
                raise LimitsError(f"{where}.{field} is required")
        endpoints[name] = EndpointLimits(
            priority=_int_field(spec["priority"], f"{where}.priority", 0),
            max_batch_size=_int_field(spec["maxBatchSize"], f"{where}.maxBatchSize", 1),
            batch_window_ms=_int_field(
                spec["batchWindowMilliseconds"], f"{where}.batchWindowMilliseconds", 0
            ),
            max_queue_wait_ms=_int_field(
                spec["maxQueueWaitMilliseconds"], f"{where}.maxQueueWaitMilliseconds", 0
            ),
            max_queue_length=_int_field(spec["maxQueueLength"], f"{where}.maxQueueLength", 0),
        )
    default = obj.get("defaultEndpoint", next(iter(endpoints)))
    if not isinstance(default, str) or default not in endpoints:
        raise LimitsError(f"defaultEndpoint {json.dumps(default)} is not one of the endpoints")
    return LimitsDocument(version=version, default_endpoint=default, endpoints=endpoints)


def default_limits(max_batch_size: int) -> LimitsDocument:
    """One endpoint that takes the whole batch, a short window, a minute of queueing."""
    return LimitsDocument(
        version=0,
        default_endpoint="default",
        endpoints={
            "default": EndpointLimits(
                priority=0,
                max_batch_size=max_batch_size,
                batch_window_ms=2,
                max_queue_wait_ms=60_000,
                max_queue_length=1024,
            )
        },
    )
