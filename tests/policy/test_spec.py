"""PoolSpec.from_crd: defaults and refusals."""

from __future__ import annotations

import pytest

from carpool_policy import IntRange, PoolSpec, SpecError

MINIMAL = {"endpoints": [{"name": "chat"}]}


def test_minimal_spec_gets_the_crd_defaults():
    spec = PoolSpec.from_crd(MINIMAL)
    endpoint = spec.endpoints[0]
    assert (spec.min_replicas, spec.max_replicas) == (1, 8)
    assert endpoint.ttft_p95_seconds is None
    assert endpoint.max_batch_size == IntRange(1, 16)
    assert endpoint.batch_window_milliseconds == IntRange(0, 5)
    assert spec.scaling.interval_seconds == 15
    assert spec.scaling.scale_down_stabilization_seconds == 300
    assert spec.scaling.max_scale_up_step == 4


def test_sla_milliseconds_become_seconds():
    spec = PoolSpec.from_crd({"endpoints": [{"name": "a", "sla": {"ttftP95Milliseconds": 300}}]})
    assert spec.endpoints[0].ttft_p95_seconds == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"endpoints": []}, "spec.endpoints"),
        ({"endpoints": [{"name": "a"}, {"name": "a"}]}, "duplicate names a"),
        ({"endpoints": [{"name": "a", "priority": 1001}]}, "priority"),
        ({"endpoints": [{"name": "a", "sla": {"ttftP95Milliseconds": 0}}]}, "ttftP95"),
        ({"replicas": {"min": 5, "max": 2}, **MINIMAL}, "spec.replicas"),
        ({"scaling": {"mode": "Yolo"}, **MINIMAL}, "spec.scaling.mode"),
        (
            {"endpoints": [{"name": "a", "batching": {"maxBatchSize": {"min": 0}}}]},
            "maxBatchSize.min",
        ),
        ({"endpoints": [{"name": "a", "priority": True}]}, "priority"),
    ],
)
def test_invalid_spec_is_refused_naming_the_field(spec, field):
    with pytest.raises(SpecError, match=field):
        PoolSpec.from_crd(spec)
