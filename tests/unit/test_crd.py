"""The committed CRD is exactly what the models generate, and it is a structural schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from modeldeploy_operator.crd import CRD_NAME, build_crd, render

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / f"{CRD_NAME}.yaml"


def test_committed_crd_matches_the_models() -> None:
    assert COMMITTED.read_text() == render(), (
        "crds/ drifted from operator/modeldeploy_operator/api.py: run `make crds` and commit the result"
    )


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.get("properties", {}).items():
            out.extend(_walk(value, f"{path}.{key}"))
        if isinstance(node.get("items"), dict):
            out.extend(_walk(node["items"], f"{path}[]"))
        if isinstance(node.get("additionalProperties"), dict):
            out.extend(_walk(node["additionalProperties"], f"{path}{{}}"))
    return out


def _schema() -> dict[str, Any]:
    crd = yaml.safe_load(COMMITTED.read_text())
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    return dict(version["schema"]["openAPIV3Schema"])


def test_schema_is_structural() -> None:
    for path, node in _walk(_schema()):
        forbidden = {"$ref", "title", "anyOf", "allOf", "$defs", "const"} & set(node)
        assert not forbidden, f"{path} has {forbidden}"
        assert "type" in node, f"{path} has no type"
        if node.get("additionalProperties") is False:
            raise AssertionError(f"{path}: additionalProperties false is not structural")


def test_optional_fields_are_nullable_and_names_are_camel_case() -> None:
    nodes = dict(_walk(_schema()))
    assert nodes[".spec.model.sha256"].get("nullable") is True
    assert nodes[".spec.model.sha256"]["pattern"] == "^[0-9a-f]{64}$"
    for path in nodes:
        assert "_" not in path.rsplit(".", 1)[-1], f"{path} is not camelCase"
    assert ".spec.rollout.trafficRouting.gatewayAPI.httpRoute" in nodes
    assert ".spec.inputs[].nullValues" in nodes


def test_validation_the_api_server_enforces() -> None:
    nodes = dict(_walk(_schema()))
    weight = nodes[".spec.rollout.steps[].setWeight"]
    assert (weight["minimum"], weight["maximum"]) == (0, 100)
    step_rules = [r["rule"] for r in nodes[".spec.rollout.steps[]"]["x-kubernetes-validations"]]
    assert any("size() == 1" in r for r in step_rules)
    assert nodes[".spec.model.uri"]["pattern"].startswith("^(file|https?|s3)")
    inputs = nodes[".spec.inputs"]
    assert inputs["x-kubernetes-list-type"] == "map" and inputs["x-kubernetes-list-map-keys"] == ["name"]
    assert any("self.min < self.max" in r["rule"] for r in nodes[".spec.inputs[]"]["x-kubernetes-validations"])
    interval = nodes[".spec.rollout.analysis.intervalSeconds"]
    assert interval["minimum"] == 0 and interval["exclusiveMinimum"] is True


def test_status_subresource_and_printer_columns() -> None:
    crd = build_crd()
    assert crd["spec"]["names"]["shortNames"] == ["mdep"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"] for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Version", "Weight", "Step", "Age"} <= columns
