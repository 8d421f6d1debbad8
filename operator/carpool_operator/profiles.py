"""The pool's measured profile, read from its ConfigMap, and whether it could be.

Contract (pure): ``load_profile(name, config_map)`` takes ``spec.scaling.profileConfigMap`` and
that ConfigMap as the API server returned it (None when it does not exist) and returns
``(profile, condition)``: the parsed ``carpool_policy.Profile`` (None when there is none to use:
the policy then scales from measurements alone) and the ``ProfileLoaded`` condition that says
so, with the fix: ``Loaded``; ``ConfigMapNotFound``; ``ProfileKeyMissing`` (no ``profile.json``
key, the keys it has); ``ProfileInvalid`` (not JSON, or not a profile: the parser's message names
the field). With no ConfigMap named there is no condition (None): the pool asked for none.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from carpool_operator.conditions import Condition
from carpool_policy import Profile, ProfileError

PROFILE_LOADED = "ProfileLoaded"
KEY = "profile.json"
MEANWHILE = "; the policy scales from measured queue delay alone until it is fixed"
MAKE = (
    f"make it with `carpool profile --out profile.json` on the pool's GPU and "
    f"`kubectl create configmap NAME --from-file={KEY}=profile.json`"
)


def load_profile(
    name: str, config_map: Mapping[str, Any] | None
) -> tuple[Profile | None, Condition | None]:
    if not name:
        return None, None
    if config_map is None:
        return None, _false(
            "ConfigMapNotFound",
            f"scaling.profileConfigMap names ConfigMap {name}, which does not exist in the "
            f'pool\'s namespace: {MAKE}, or set scaling.profileConfigMap to ""',
        )
    data = config_map.get("data") or {}
    text = data.get(KEY)
    if not text:
        keys = ", ".join(sorted(data)) or "none"
        return None, _false(
            "ProfileKeyMissing",
            f"ConfigMap {name} has no key {KEY} (its keys: {keys}): {MAKE}",
        )
    try:
        profile = Profile.from_dict(json.loads(text))
    except json.JSONDecodeError as error:
        return None, _false(
            "ProfileInvalid",
            f"{KEY} of ConfigMap {name} is not JSON ({error.msg} at line {error.lineno} "
            f"column {error.colno}): {MAKE}",
        )
    except (ProfileError, ValueError, TypeError, KeyError) as error:
        return None, _false(
            "ProfileInvalid",
            f"{KEY} of ConfigMap {name} is not a carpool profile ({error}): {MAKE}",
        )
    return profile, Condition(
        PROFILE_LOADED,
        "True",
        "Loaded",
        f"{KEY} of ConfigMap {name}: {profile.model} on {profile.device}, "
        f"{profile.max_batch_size} slots of {profile.max_seq_len} tokens",
    )


def _false(reason: str, message: str) -> Condition:
    return Condition(PROFILE_LOADED, "False", reason, message + MEANWHILE)
