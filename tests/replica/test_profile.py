"""Profile parsing (v2, and v1 converted) and interpolation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carpool_replica.profile import Profile, ProfileError

DOC = {
    "schema": "carpool.dev/profile/v2",
    "model": "bench-8b",
    "device": "H100",
    "kv_cache_tokens": 64000,
    "max_batch_size": 64,
    "max_seq_len": 4096,
    "prefill_chunk_tokens": 1000,
    "decode": [
        {"batch_size": 1, "context_tokens": 512, "step_seconds": 0.010},
        {"batch_size": 9, "context_tokens": 512, "step_seconds": 0.018},
        {"batch_size": 1, "context_tokens": 1536, "step_seconds": 0.012},
        {"batch_size": 9, "context_tokens": 1536, "step_seconds": 0.024},
    ],
    "prefill_chunks": [
        {"chunk_tokens": 100, "offset_tokens": 0, "seconds": 0.010},
        {"chunk_tokens": 1000, "offset_tokens": 0, "seconds": 0.100},
        {"chunk_tokens": 100, "offset_tokens": 1000, "seconds": 0.020},
        {"chunk_tokens": 1000, "offset_tokens": 1000, "seconds": 0.200},
    ],
}

V1 = {
    "schema": "carpool.dev/profile/v1",
    "model": "bench-8b",
    "device": "H100",
    "kv_cache_tokens": 1000,
    "max_batch_size": 4,
    "decode": DOC["decode"],
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
    ("tokens", "offset", "expected"),
    [
        (100, 0, 0.010),  # a measured point
        (550, 0, 0.055),  # halfway in chunk length
        (100, 500, 0.015),  # halfway in offset: later chunks attend to more cached tokens
        (1000, 2000, 0.300),  # past the largest offset: the last slope continues
        (10, 0, 0.010),  # below the smallest chunk: flat (fixed overhead)
    ],
)
def test_chunk_seconds_interpolates_in_length_and_offset(tokens, offset, expected):
    assert Profile.from_dict(DOC).chunk_seconds(tokens, offset) == pytest.approx(expected)


def test_a_prompt_is_prefilled_in_chunks_of_the_profiles_chunk_size():
    # 1,100 tokens: a 1,000-token chunk at 0, then a 100-token chunk at offset 1,000.
    assert Profile.from_dict(DOC).prefill_seconds(1100) == pytest.approx(0.100 + 0.020)


def test_v1_profile_is_converted_with_its_slot_context_and_one_shot_prefill():
    profile = Profile.from_dict(V1)
    assert profile.max_seq_len == 250  # kv_cache_tokens / max_batch_size: one slot each
    assert profile.prefill_chunk_tokens == 2048
    assert profile.prefill_seconds(1100) == pytest.approx(0.110)
    assert profile.chunk_seconds(1000, 100) == pytest.approx(0.110 - 0.010)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"schema": "other/v9"}, "schema"),
        ({"decode": []}, "decode"),
        ({"prefill_chunks": "fast"}, "prefill_chunks"),
        ({"max_seq_len": 0}, "max_seq_len"),
        ({"kv_cache_tokens": -1}, "kv_cache_tokens"),
        ({"decode": [{"batch_size": 1, "context_tokens": 1, "step_seconds": "x"}]}, "decode[0]"),
        (
            {"prefill_chunks": [{"chunk_tokens": 1.5, "offset_tokens": 0, "seconds": 0.1}]},
            "prefill_chunks[0].chunk_tokens",
        ),
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
