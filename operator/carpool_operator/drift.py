"""Does a live object still hold everything the operator wants in it?

Contract (pure): `contains(live, desired)` is True when every field of `desired` is in `live`
with the same value. Fields only `live` has (server defaults, status, other managers' fields)
are ignored; lists must have the same length and match item by item; a number and a string
match when they print the same (quantities: 1 and "1"). It decides whether an event about an
owned object needs a reconcile; server-side apply stays the judge of what actually changes.
"""

from __future__ import annotations

from typing import Any


def contains(live: Any, desired: Any) -> bool:
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all(key in live and contains(live[key], value) for key, value in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(contains(a, b) for a, b in zip(live, desired, strict=True))
    if isinstance(desired, bool) or isinstance(live, bool):
        return live is desired
    if isinstance(desired, int | float | str) and isinstance(live, int | float | str):
        return live == desired or str(live) == str(desired)
    return live == desired
