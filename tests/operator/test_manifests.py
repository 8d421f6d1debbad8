"""The shipped CRD and RBAC rules keep their promises (read from the files, no cluster)."""

from __future__ import annotations

from pathlib import Path

import yaml

from carpool_policy import spec_parsing

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "carpool.dev_inferencepools.yaml"
RBAC = REPO / "charts" / "carpool" / "files" / "operator-rbac.yaml"


def _schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(schema: dict, path: str):
    yield path, schema
    for name, child in (schema.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_every_spec_and_status_field_has_a_description():
    schema = _schema()
    missing = [
        path
        for root in ("spec", "status")
        for path, node in _walk(schema["properties"][root], root)
        if not node.get("description") and not path.endswith("[]")
    ]
    assert missing == []


def test_crd_defaults_match_the_policys_defaults():
    spec = _schema()["properties"]["spec"]["properties"]
    endpoint = spec["endpoints"]["items"]["properties"]
    batching = endpoint["batching"]["properties"]
    assert spec["replicas"]["default"] == spec_parsing.DEFAULT_REPLICAS
    assert batching["maxBatchSize"]["default"] == spec_parsing.DEFAULT_MAX_BATCH_SIZE
    window = batching["batchWindowMilliseconds"]["default"]
    assert window == spec_parsing.DEFAULT_BATCH_WINDOW_MILLISECONDS
    queue = {k: v["default"] for k, v in endpoint["queue"]["properties"].items()}
    assert queue == spec_parsing.DEFAULT_QUEUE
    scaling = {k: v["default"] for k, v in spec["scaling"]["properties"].items() if "default" in v}
    assert scaling == spec_parsing.DEFAULT_SCALING
    assert spec["scaling"]["properties"]["mode"]["enum"] == list(spec_parsing.SCALING_MODES)
    assert spec["endpoints"]["maxItems"] == spec_parsing.MAX_ENDPOINTS


def test_rbac_rules_have_no_wildcards_and_never_delete():
    rules = yaml.safe_load(RBAC.read_text())
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], rule
        assert "delete" not in rule["verbs"] and "deletecollection" not in rule["verbs"], rule


def test_rbac_never_lists_or_watches_secrets():
    rules = yaml.safe_load(RBAC.read_text())
    verbs = {v for r in rules if "secrets" in r["resources"] for v in r["verbs"]}
    assert verbs == {"get", "create", "patch"}
