"""The ModelDeployment models refuse bad specs with messages that name the field and the value."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modeldeploy_operator.api import ModelDeploymentSpec, SpecError, format_from_uri, parse_spec

DIGEST = "9f2c" + "0" * 60

GOOD: dict[str, Any] = {
    "model": {"uri": "https://models.example/porosity/7/model.joblib", "sha256": DIGEST, "version": "7"},
    "inputs": [
        {"name": "RHOB", "min": 1.5, "max": 3.1, "nullValues": [-999, -999.25]},
        {"name": "NPHI", "min": -0.05, "max": 0.6, "nullValues": [-999]},
        {"name": "GR", "min": 0, "max": 300},
    ],
    "replicas": 2,
    "rollout": {
        "steps": [{"setWeight": 10}, {"pause": {"seconds": 60}}, {"setWeight": 50}, {"pause": {}}],
        "analysis": {"intervalSeconds": 30, "minRequests": 50, "failureLimit": 1, "maxErrorRate": 0.01},
        "trafficRouting": {"gatewayAPI": {"httpRoute": "porosity"}},
        "progressDeadlineSeconds": 600,
    },
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """GOOD with one field (dotted path, list indexes as numbers) replaced."""
    spec = copy.deepcopy(GOOD)
    node: Any = spec
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return spec


def test_the_architecture_example_parses_with_camel_case_fields() -> None:
    spec = parse_spec(GOOD)
    assert spec.model.effective_format == "joblib"
    assert [i.name for i in spec.inputs] == ["RHOB", "NPHI", "GR"]
    assert spec.inputs[0].null_values == [-999, -999.25]
    assert spec.rollout.steps[3].pause is not None and spec.rollout.steps[3].pause.seconds is None
    assert spec.rollout.traffic_routing is not None
    assert spec.rollout.traffic_routing.gateway_api is not None
    assert spec.rollout.traffic_routing.gateway_api.http_route == "porosity"
    # and it round-trips to the same wire names
    dumped = spec.model_dump(by_alias=True, exclude_none=True)
    assert dumped["rollout"]["trafficRouting"] == {"gatewayAPI": {"httpRoute": "porosity"}}
    assert dumped["inputs"][0]["nullValues"] == [-999, -999.25]


def test_defaults_fill_a_minimal_spec() -> None:
    spec = parse_spec({"model": {"uri": "file:///models/iris.onnx", "version": "1"}})
    assert spec.replicas == 2
    assert spec.model.method == "predict"
    assert spec.rollout.analysis.min_requests == 50
    assert [s.set_weight for s in spec.rollout.steps if s.set_weight is not None] == [10, 50]
    assert spec.rollout.traffic_routing is None


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "rollout.steps.0.setWeight",
            150,
            "spec.rollout.steps[0].setWeight: Input should be less than or equal to 100 (got 150)",
        ),
        (
            "rollout.steps.0.setWeight",
            -1,
            "spec.rollout.steps[0].setWeight: Input should be greater than or equal to 0",
        ),
        (
            "rollout.steps.1",
            {"setWeight": 20, "pause": {}},
            "spec.rollout.steps[1]: a step must have exactly one of setWeight, pause, shadow (got: setWeight, pause)",
        ),
        (
            "rollout.steps.1",
            {},
            "spec.rollout.steps[1]: a step must have exactly one of setWeight, pause, shadow (got: none)",
        ),
        ("model.sha256", "ABC", "spec.model.sha256: String should match pattern '^[0-9a-f]{64}$' (got 'ABC')"),
        ("model.sha256", DIGEST.upper(), "spec.model.sha256: String should match pattern"),
        (
            "model.uri",
            "ftp://host/model.joblib",
            "spec.model.uri: Value error, uri 'ftp://host/model.joblib' has scheme 'ftp'",
        ),
        ("model.uri", "model.joblib", "spec.model.uri"),
        ("model.format", "h5", "spec.model.format: Input should be 'joblib', 'pickle', 'skops' or 'onnx' (got 'h5')"),
        ("model.method", "transform", "spec.model.method"),
        ("inputs.1", {"name": "RHOB"}, "spec.inputs: Value error, input name 'RHOB' at index 1 is a duplicate"),
        ("inputs.0", {"name": "RHOB", "min": 3.1, "max": 1.5}, "spec.inputs[0]: min (3.1) must be less than max (1.5)"),
        ("inputs.0", {"name": "RHOB", "min": 2, "max": 2}, "spec.inputs[0]: min (2.0) must be less than max (2.0)"),
        (
            "rollout.analysis.intervalSeconds",
            0,
            "spec.rollout.analysis.intervalSeconds: Input should be greater than 0 (got 0)",
        ),
        (
            "rollout.analysis.maxErrorRate",
            1.5,
            "spec.rollout.analysis.maxErrorRate: Input should be less than or equal to 1",
        ),
        ("rollout.progressDeadlineSeconds", -5, "spec.rollout.progressDeadlineSeconds: Input should be greater than 0"),
        ("replicas", 0, "spec.replicas: Input should be greater than or equal to 1 (got 0)"),
        (
            "rollout.analysis.metrics",
            [{"name": "drift", "query": "x"}],
            "spec.rollout.analysis.metrics[0]: a metric needs min or max",
        ),
        ("rollout.stepz", [], "spec.rollout.stepz: Extra inputs are not permitted"),
    ],
)
def test_bad_specs_are_refused_naming_field_and_value(path: str, value: Any, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(with_change(path, value))
    assert expected.replace("Value error, ", "") in str(err.value)


def test_pickle_without_digest_is_refused_but_onnx_without_digest_is_not() -> None:
    joblib = with_change("model", {"uri": "s3://bucket/m.joblib", "version": "1"})
    with pytest.raises(SpecError, match=r"spec\.model: sha256 is required for joblib artifacts"):
        parse_spec(joblib)
    explicit = with_change("model", {"uri": "s3://bucket/model", "format": "pickle", "version": "1"})
    with pytest.raises(SpecError, match="sha256 is required for pickle"):
        parse_spec(explicit)
    onnx = with_change("model", {"uri": "s3://bucket/m.onnx", "version": "1"})
    assert parse_spec(onnx).model.effective_format == "onnx"


def test_format_needed_when_extension_says_nothing() -> None:
    with pytest.raises(SpecError, match="format is required"):
        parse_spec(with_change("model", {"uri": "https://h/model", "sha256": DIGEST, "version": "1"}))


def test_every_problem_is_reported_at_once() -> None:
    spec = with_change("replicas", 0)
    spec["rollout"]["steps"][0] = {"setWeight": 101}
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert "spec.replicas" in str(err.value) and "spec.rollout.steps[0].setWeight" in str(err.value)


@pytest.mark.parametrize(
    ("uri", "fmt"),
    [
        ("file:///m.joblib", "joblib"),
        ("s3://b/m.PKL", "pickle"),
        ("https://h/m.skops?x=1", "skops"),
        ("https://h/m.onnx", "onnx"),
        ("https://h/model.bin", None),
    ],
)
def test_format_from_extension(uri: str, fmt: str | None) -> None:
    assert format_from_uri(uri) == fmt


def test_spec_model_accepts_snake_case_in_python() -> None:
    spec = ModelDeploymentSpec.model_validate(GOOD)
    spec2 = ModelDeploymentSpec(model=spec.model, replicas=3)
    assert spec2.replicas == 3


@pytest.mark.parametrize(
    ("name", "problem"),
    [("iris", None), ("iris-v2", None), ("a" * 52, None),
     ("iris.v2", "metadata.name: 'iris.v2' must be a DNS-1035 label"),
     ("7iris", "metadata.name: '7iris' must be a DNS-1035 label"),
     ("a" * 53, "metadata.name: 53 characters; at most 52")],
)  # fmt: skip
def test_names_whose_children_cannot_exist_are_refused(name: str, problem: str | None) -> None:
    # issue 11 M10: <name>-stable and <name>-canary are Service names (DNS-1035, <= 63 characters)
    from modeldeploy_operator.api import name_problem
    from modeldeploy_operator.crd import build_crd

    got = name_problem(name)
    assert (got if got is None else got[: len(problem or "")]) == problem
    rules = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    assert any("self.metadata.name" in rule["rule"] for rule in rules)
