"""The limits file: re-read on content change, including a ConfigMap-style symlink swap."""

from __future__ import annotations

import json
import os

import pytest

from carpool_worker.limits import LimitsError, LimitsFileWatcher, parse_limits

from .conftest import ADMIN_TOKEN, LIMITS, metric_value, wait_for


def with_version(version: int, batch: int = 4) -> dict:
    doc = json.loads(json.dumps(LIMITS))
    doc["version"] = version
    doc["endpoints"]["interactive"]["maxBatchSize"] = batch
    return doc


def test_watcher_applies_a_changed_file(tmp_path):
    path = tmp_path / "limits.json"
    path.write_text(json.dumps(with_version(1)))
    applied = []
    watcher = LimitsFileWatcher(path, lambda d: applied.append(d.version) or True)
    watcher.check_once()
    path.write_text(json.dumps(with_version(2)))
    watcher.check_once()
    assert applied == [1, 2]


def test_watcher_ignores_an_unchanged_file(tmp_path):
    path = tmp_path / "limits.json"
    path.write_text(json.dumps(with_version(1)))
    applied = []
    watcher = LimitsFileWatcher(path, lambda d: applied.append(d.version) or True)
    watcher.check_once()
    os.utime(path)  # a new mtime, the same content
    watcher.check_once()
    assert applied == [1]


def test_watcher_follows_a_configmap_symlink_swap(tmp_path):
    """The kubelet writes ..<timestamp>/ and swaps ..data; limits.json -> ..data/limits.json."""
    for version in (1, 2):
        (tmp_path / f"..v{version}").mkdir()
        (tmp_path / f"..v{version}" / "limits.json").write_text(json.dumps(with_version(version)))
    os.symlink("..v1", tmp_path / "..data")
    os.symlink("..data/limits.json", tmp_path / "limits.json")
    applied = []
    watcher = LimitsFileWatcher(tmp_path / "limits.json", lambda d: applied.append(d.version))
    watcher.check_once()
    os.symlink("..v2", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # the atomic rename the kubelet does
    watcher.check_once()
    assert applied == [1, 2]


def test_watcher_keeps_the_limits_in_force_on_a_malformed_file(tmp_path):
    path = tmp_path / "limits.json"
    path.write_text("{not json")
    applied = []
    assert LimitsFileWatcher(path, applied.append).check_once() is False
    assert applied == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["endpoints"]["batch"].pop("priority"), "endpoints.batch.priority"),
        (lambda d: d["endpoints"]["batch"].update(priority=True), "endpoints.batch.priority"),
        (lambda d: d["endpoints"]["batch"].update(maxQueueLength=1.5), "maxQueueLength"),
        (lambda d: d["endpoints"]["batch"].update(extra=1), "endpoints.batch.extra"),
        (lambda d: d.update(version=-1), "version"),
    ],
    ids=["missing", "bool", "float", "unknown_field", "negative_version"],
)
def test_parse_names_the_bad_field(change, field):
    doc = with_version(3)
    change(doc)
    with pytest.raises(LimitsError, match=field.replace(".", r"\.")):
        parse_limits(doc)


def test_worker_rereads_its_limits_file(server, client, limits_file):
    current = server.worker.engine.limits.version
    limits_file.write_text(json.dumps(with_version(current + 1, batch=3)))

    def version():
        return metric_value(client.get("/metrics").text, "carpool_limits_version")

    wait_for(lambda: version() == current + 1)
    text = client.get("/metrics").text
    assert (
        metric_value(text, "carpool_batch_limit", endpoint="interactive", limit="maxBatchSize") == 3
    )


def test_put_limits_applies_and_answers_the_version(server, client):
    version = server.worker.engine.limits.version + 5
    r = client.put(
        "/admin/limits",
        json=with_version(version, batch=2),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert r.status_code == 200
    assert r.json() == {"appliedVersion": version}
    assert metric_value(client.get("/metrics").text, "carpool_limits_version") == version


def test_put_stale_limits_is_409(server, client):
    version = server.worker.engine.limits.version
    r = client.put(
        "/admin/limits",
        json=with_version(version - 1),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert r.status_code == 409
