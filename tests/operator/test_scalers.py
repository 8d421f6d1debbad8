"""Who sets the worker count: the mode, the bounds, and outside autoscalers (no fights)."""

from __future__ import annotations

import pytest

from carpool_operator import scalers


def _spec(mode="Auto", manual=None, low=2, high=6):
    scaling = {"mode": mode}
    if manual is not None:
        scaling["manualReplicas"] = manual
    return {"replicas": {"min": low, "max": high}, "scaling": scaling}


@pytest.mark.parametrize(
    ("case", "spec", "current", "external", "expected"),
    [
        ("auto new deployment starts at min", _spec(), None, [], 2),
        ("auto within bounds is left alone", _spec(), 4, [], None),
        ("auto below min is raised to min", _spec(), 1, [], 2),
        ("auto above max is lowered to max", _spec(), 9, [], 6),
        ("manual sets its count", _spec("Manual", 5), 2, [], 5),
        ("manual zero parks the pool", _spec("Manual", 0), 2, [], 0),
        ("manual already there writes nothing", _spec("Manual", 5), 5, [], None),
        ("recommend new deployment starts at min", _spec("Recommend"), None, [], 2),
        ("recommend leaves an existing count alone", _spec("Recommend"), 9, [], None),
        ("an hpa stops auto", _spec(), 9, ["HorizontalPodAutoscaler/x"], None),
        ("an hpa stops manual", _spec("Manual", 5), 2, ["HorizontalPodAutoscaler/x"], None),
        ("a scaledobject stops a new deployment", _spec(), None, ["ScaledObject/x"], None),
    ],
)
def test_replicas_to_apply(case, spec, current, external, expected):
    assert scalers.replicas_to_apply(spec, current, external) == expected, case


def _hpa(name, target, kind="Deployment", api_version="apps/v1"):
    ref = {"kind": kind, "name": target, "apiVersion": api_version}
    return {"metadata": {"name": name}, "spec": {"scaleTargetRef": ref}}


def test_hpa_on_the_worker_deployment_is_found():
    hpas = [_hpa("gpu-util", "assistant-worker"), _hpa("other", "web")]
    assert scalers.external_scalers("assistant-worker", hpas) == [
        "HorizontalPodAutoscaler/gpu-util"
    ]


def test_hpa_on_the_pool_itself_is_not_a_conflict():
    hpa = _hpa("pool", "assistant-worker", kind="InferencePool", api_version="carpool.dev/v1alpha1")
    assert scalers.external_scalers("assistant-worker", [hpa]) == []


def test_scaled_object_without_kind_targets_a_deployment():
    scaled = {
        "metadata": {"name": "queue"},
        "spec": {"scaleTargetRef": {"name": "assistant-worker"}},
    }
    assert scalers.external_scalers("assistant-worker", [], [scaled]) == ["ScaledObject/queue"]
