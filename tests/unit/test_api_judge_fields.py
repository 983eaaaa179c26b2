"""The judge's analysis fields and spec.model.reference: defaults keep the checks off, bad values
are refused naming the field, value and reason, and the CRD carries the same rules."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modeldeploy_operator.api import AnalysisSpec, SpecError, parse_spec
from modeldeploy_operator.crd import build_crd

DIGEST = "ab" * 32
BASE: dict[str, Any] = {"model": {"uri": "file:///models/m.skops", "version": "1"}}
JUDGE = {
    "confidence": 0.99, "maxErrorRateIncrease": 0.01, "maxLatencyP99Ratio": 1.5, "maxRefusalRateIncrease": 0.05,
    "maxPredictionShift": 0.1, "maxInputDrift": 0.2, "lowTraffic": "raiseWeight",
}  # fmt: skip


def spec(analysis: dict[str, Any], reference: dict[str, Any] | None = None) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw["rollout"] = {"analysis": analysis}
    if reference is not None:
        raw["model"]["reference"] = reference
    return raw


def test_absent_fields_mean_checks_off_and_confidence_095() -> None:
    a = AnalysisSpec()
    assert a.confidence == 0.95 and a.low_traffic is None
    assert (a.max_error_rate_increase, a.max_latency_p99_ratio, a.max_refusal_rate_increase) == (None, None, None)
    assert (a.max_prediction_shift, a.max_input_drift) == (None, None)
    assert parse_spec(BASE).model.reference is None


def test_all_fields_parse_with_a_reference_profile() -> None:
    parsed = parse_spec(spec(JUDGE, {"uri": "s3://bucket/m.profile.json", "sha256": DIGEST}))
    a = parsed.rollout.analysis
    assert (a.confidence, a.max_error_rate_increase, a.max_latency_p99_ratio) == (0.99, 0.01, 1.5)
    assert (a.max_refusal_rate_increase, a.max_prediction_shift, a.max_input_drift) == (0.05, 0.1, 0.2)
    assert a.low_traffic == "raiseWeight"
    assert parsed.model.reference is not None and parsed.model.reference.sha256 == DIGEST


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("confidence", 1.0, "spec.rollout.analysis.confidence: Input should be less than 1 (got 1.0)"),
        ("confidence", 0.4, "spec.rollout.analysis.confidence: Input should be greater than or equal to 0.5"),
        ("maxErrorRateIncrease", 0, "spec.rollout.analysis.maxErrorRateIncrease: Input should be greater than 0"),
        ("maxErrorRateIncrease", 1.5, "spec.rollout.analysis.maxErrorRateIncrease: Input should be less than or"),
        ("maxRefusalRateIncrease", -0.1, "spec.rollout.analysis.maxRefusalRateIncrease: Input should be greater"),
        ("maxLatencyP99Ratio", 0.9, "analysis.maxLatencyP99Ratio: Input should be greater than or equal to 1"),
        ("maxPredictionShift", 1, "spec.rollout.analysis.maxPredictionShift: Input should be less than 1 (got 1)"),
        ("lowTraffic", "wait", "spec.rollout.analysis.lowTraffic: Input should be 'extend', 'raiseWeight' or 'hold'"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_naming_field_and_value(field: str, value: Any, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec({field: value}))
    assert message in str(err.value)


def test_input_drift_needs_a_reference_profile() -> None:
    with pytest.raises(SpecError, match=r"maxInputDrift \(0.2\) needs model.reference"):
        parse_spec(spec({"maxInputDrift": 0.2}))


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ({"uri": "s3://b/p.json"}, "spec.model.reference.sha256: Field required"),
        ({"uri": "ftp://b/p.json", "sha256": DIGEST}, "spec.model.reference.uri: uri 'ftp://b/p.json' has scheme"),
        ({"uri": "s3://b/p.json", "sha256": "XYZ"}, "spec.model.reference.sha256: String should match pattern"),
    ],
)  # fmt: skip
def test_a_bad_reference_is_refused(reference: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec({}, reference))
    assert message in str(err.value)


def test_the_crd_carries_the_same_rules() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    analysis = schema["properties"]["rollout"]["properties"]["analysis"]["properties"]
    assert (
        analysis["maxErrorRateIncrease"]["exclusiveMinimum"] is True
        and analysis["maxErrorRateIncrease"]["minimum"] == 0
    )
    assert analysis["confidence"]["default"] == 0.95 and analysis["confidence"]["exclusiveMaximum"] is True
    assert analysis["lowTraffic"]["enum"] == ["extend", "raiseWeight", "hold"]
    assert analysis["maxLatencyP99Ratio"]["minimum"] == 1
    reference = schema["properties"]["model"]["properties"]["reference"]
    assert reference["required"] == ["uri", "sha256"] and reference["properties"]["sha256"]["pattern"]
    rules = [r["rule"] for r in schema["x-kubernetes-validations"]]
    assert any("maxInputDrift" in r and "has(self.model.reference)" in r for r in rules)
