"""The limits document the operator writes: initial values, clamping, and versions."""

from __future__ import annotations

from carpool_operator import limits


def test_new_pool_starts_each_endpoint_at_its_bounds_max(pool):
    document = limits.build_limits(pool["spec"])
    assert document == {
        "version": 1,
        "defaultEndpoint": "nightly-labeling",
        "endpoints": {
            "inline-completion": {
                "priority": 100,
                "maxBatchSize": 16,
                "batchWindowMilliseconds": 5,
                "maxQueueWaitMilliseconds": 2000,
                "maxQueueLength": 256,
            },
            "nightly-labeling": {
                "priority": 0,
                "maxBatchSize": 128,
                "batchWindowMilliseconds": 250,
                "maxQueueWaitMilliseconds": 600000,
                "maxQueueLength": 10000,
            },
        },
    }


def test_first_endpoint_is_the_default_when_none_is_marked(pool):
    pool["spec"]["endpoints"][1]["default"] = False
    assert limits.build_limits(pool["spec"])["defaultEndpoint"] == "inline-completion"


def test_limits_in_force_are_kept_within_the_bounds(pool):
    in_force = {"inline-completion": {"maxBatchSize": 12, "batchWindowMilliseconds": 3}}
    document = limits.build_limits(pool["spec"], in_force)
    assert document["endpoints"]["inline-completion"]["maxBatchSize"] == 12
    assert document["endpoints"]["inline-completion"]["batchWindowMilliseconds"] == 3


def test_limits_in_force_are_clamped_into_narrowed_bounds(pool):
    pool["spec"]["endpoints"][0]["batching"]["maxBatchSize"] = {"min": 1, "max": 8}
    in_force = {"inline-completion": {"maxBatchSize": 12, "batchWindowMilliseconds": 3}}
    document = limits.build_limits(pool["spec"], in_force)
    assert document["endpoints"]["inline-completion"]["maxBatchSize"] == 8


def test_unchanged_document_keeps_its_version(pool):
    first = limits.build_limits(pool["spec"])
    again = limits.build_limits(pool["spec"], previous=first)
    assert again == first


def test_changed_document_gets_the_next_version(pool):
    first = limits.build_limits(pool["spec"], previous={"version": 6})
    pool["spec"]["endpoints"][0]["priority"] = 200
    second = limits.build_limits(pool["spec"], previous=first)
    assert (first["version"], second["version"]) == (7, 8)


def test_version_never_goes_below_the_one_recorded_in_status(pool):
    document = limits.build_limits(pool["spec"], previous=None, floor_version=41)
    assert document["version"] == 42


def test_in_force_values_are_read_from_status():
    status = {
        "endpoints": [
            {"name": "a", "maxBatchSize": 4, "batchWindowMilliseconds": 2, "slaMet": True},
            {"name": "b", "queueDelayP95Milliseconds": 18},
        ]
    }
    assert limits.in_force_from_status(status) == {
        "a": {"maxBatchSize": 4, "batchWindowMilliseconds": 2}
    }


def test_render_is_deterministic_and_parse_reads_it_back(pool):
    document = limits.build_limits(pool["spec"])
    assert limits.parse(limits.render(document)) == document
    assert limits.render(document) == limits.render(dict(reversed(list(document.items()))))


def test_unreadable_configmap_value_parses_as_none():
    assert limits.parse("{not json") is None
    assert limits.parse("[1, 2]") is None
    assert limits.parse(None) is None
