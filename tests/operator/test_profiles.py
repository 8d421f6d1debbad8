"""ProfileLoaded: a missing, keyless or invalid profile ConfigMap is said, with the fix."""

from __future__ import annotations

import json
from pathlib import Path

from carpool_operator.profiles import load_profile

PROFILE = Path(__file__).resolve().parents[2] / "profiles"


def config_map(data: dict) -> dict:
    return {"metadata": {"name": "prof", "resourceVersion": "1"}, "data": data}


def a_profile_text() -> str:
    return sorted(PROFILE.glob("*.json"))[0].read_text()


def test_no_profile_named_means_no_condition() -> None:
    assert load_profile("", None) == (None, None)


def test_a_missing_configmap_is_named_with_how_to_make_it() -> None:
    profile, condition = load_profile("prof", None)
    assert profile is None
    assert (condition.status, condition.reason) == ("False", "ConfigMapNotFound")
    assert "kubectl create configmap" in condition.message
    assert "scaling.profileConfigMap" in condition.message


def test_a_configmap_without_the_key_lists_its_keys() -> None:
    _, condition = load_profile("prof", config_map({"profile.yaml": "x"}))
    assert condition.reason == "ProfileKeyMissing"
    assert "its keys: profile.yaml" in condition.message


def test_text_that_is_not_json_says_where() -> None:
    _, condition = load_profile("prof", config_map({"profile.json": "{not json"}))
    assert condition.reason == "ProfileInvalid"
    assert "is not JSON" in condition.message and "line 1" in condition.message


def test_json_that_is_not_a_profile_is_invalid() -> None:
    _, condition = load_profile("prof", config_map({"profile.json": json.dumps({"a": 1})}))
    assert condition.reason == "ProfileInvalid"
    assert "is not a carpool profile" in condition.message


def test_a_valid_profile_is_loaded() -> None:
    profile, condition = load_profile("prof", config_map({"profile.json": a_profile_text()}))
    assert profile is not None
    assert (condition.status, condition.reason) == ("True", "Loaded")
