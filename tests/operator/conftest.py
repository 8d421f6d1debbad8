"""Pools as the API server returns them (the CRD's defaults filled in), for the builder tests."""

from __future__ import annotations

import copy
from typing import Any

import pytest

BASE_POOL: dict[str, Any] = {
    "apiVersion": "carpool.dev/v1alpha1",
    "kind": "InferencePool",
    "metadata": {"name": "assistant", "namespace": "team-a", "uid": "u-1", "generation": 1},
    "spec": {
        "model": {"preset": "tiny"},
        "worker": {
            "image": "ghcr.io/example/carpool-worker:0.1.0",
            "port": 8000,
            "resources": {"limits": {"nvidia.com/gpu": 1}},
        },
        "replicas": {"min": 1, "max": 8},
        "endpoints": [
            {
                "name": "inline-completion",
                "priority": 100,
                "default": False,
                "sla": {"ttftP95Milliseconds": 300},
                "batching": {
                    "maxBatchSize": {"min": 1, "max": 16},
                    "batchWindowMilliseconds": {"min": 0, "max": 5},
                },
                "queue": {"maxWaitMilliseconds": 2000, "maxLength": 256},
            },
            {
                "name": "nightly-labeling",
                "priority": 0,
                "default": True,
                "batching": {
                    "maxBatchSize": {"min": 8, "max": 128},
                    "batchWindowMilliseconds": {"min": 0, "max": 250},
                },
                "queue": {"maxWaitMilliseconds": 600000, "maxLength": 10000},
            },
        ],
        "scaling": {
            "mode": "Auto",
            "intervalSeconds": 15,
            "scaleDownStabilizationSeconds": 300,
            "maxScaleUpStep": 4,
            "onMetricsUnavailable": "Hold",
            "profileConfigMap": "",
        },
    },
}


@pytest.fixture
def pool() -> dict[str, Any]:
    return copy.deepcopy(BASE_POOL)
