"""Profile parsing and interpolation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carpool_policy import Profile, ProfileError

DOC = {
    "schema": "carpool.dev/profile/v1",
    "model": "bench-8b",
    "device": "H100",
    "kv_cache_tokens": 1000,
    "max_batch_size": 64,
    "decode": [
        {"batch_size": 1, "context_tokens": 512, "step_seconds": 0.010},
        {"batch_size": 9, "context_tokens": 512, "step_seconds": 0.018},
        {"batch_size": 1, "context_tokens": 1536, "step_seconds": 0.012},
        {"batch_size": 9, "context_tokens": 1536, "step_seconds": 0.024},
    ],
    "prefill": [
        {"prompt_tokens": 100, "seconds": 0.010},
        {"prompt_tokens": 1100, "seconds": 0.110},
    ],
}


@pytest.mark.parametrize(
    ("batch", "context", "expected"),
    [
        (1, 512, 0.010),  # a measured point
        (5, 512, 0.014),  # halfway in batch
        (1, 1024, 0.011),  # halfway in context
        (5, 1024, 0.016),  # bilinear
        (17, 512, 0.026),  # past the largest batch: the last slope continues
        (1, 100, 0.010),  # below the smallest context: flat
    ],
)
def test_step_seconds_interpolates_linearly(batch, context, expected):
    assert Profile.from_dict(DOC).step_seconds(batch, context) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [(100, 0.010), (600, 0.060), (2100, 0.210), (10, 0.010)],
)
def test_prefill_seconds_interpolates_and_extrapolates(tokens, expected):
    assert Profile.from_dict(DOC).prefill_seconds(tokens) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema": "other/v9"}, "schema"),
        ({"decode": []}, "decode"),
        ({"prefill": "fast"}, "prefill"),
        ({"kv_cache_tokens": -1}, "kv_cache_tokens"),
        ({"decode": [{"batch_size": 1, "context_tokens": 1, "step_seconds": "x"}]}, "decode[0]"),
        ({"prefill": [{"prompt_tokens": 1.5, "seconds": 0.1}]}, "prefill[0].prompt_tokens"),
    ],
)
def test_bad_profile_is_refused_naming_the_field(change, field):
    with pytest.raises(ProfileError, match=field.replace("[", r"\[").replace("]", r"\]")):
        Profile.from_dict({**DOC, **change})


def test_profile_round_trips_through_to_dict():
    profile = Profile.from_dict(DOC)
    assert Profile.from_dict(profile.to_dict()) == profile


@settings(max_examples=60, deadline=None)
@given(
    a=st.floats(0, 300),
    b=st.floats(0, 300),
    context=st.floats(0, 20000),
)
def test_step_time_never_decreases_with_batch(a, b, context):
    profile = Profile.from_dict(DOC)
    low, high = sorted((a, b))
    assert profile.step_seconds(low, context) <= profile.step_seconds(high, context) + 1e-12
