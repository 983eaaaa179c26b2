"""analysis.maxMeanAbsDiff is in the answers' own unit: a regressor's threshold above 1 is accepted by
the API and the CRD, zero and negative ones are refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy_operator.api import SpecError, parse_spec
from modeldeploy_operator.crd import build_crd

STEPS = [{"shadow": {"seconds": 120, "percent": 25}}, {"setWeight": 50}]


def spec(threshold: Any) -> dict[str, Any]:
    return {
        "model": {"uri": "file:///models/price.skops", "version": "1"},
        "rollout": {"steps": STEPS, "analysis": {"maxMeanAbsDiff": threshold}},
    }


@pytest.mark.parametrize("threshold", [2.5, 1, 0.02, 1500.0])
def test_a_regressor_threshold_in_any_unit_is_accepted(threshold: float) -> None:
    assert parse_spec(spec(threshold)).rollout.analysis.max_mean_abs_diff == threshold


@pytest.mark.parametrize(
    ("threshold", "message"),
    [
        (-2.5, "spec.rollout.analysis.maxMeanAbsDiff: Input should be greater than 0 (got -2.5)"),
        (0, "spec.rollout.analysis.maxMeanAbsDiff: Input should be greater than 0 (got 0)"),
        ("a lot", "spec.rollout.analysis.maxMeanAbsDiff"),
    ],
)
def test_a_threshold_not_above_zero_is_refused_naming_the_field(threshold: Any, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec(threshold))
    assert message in str(err.value)


def test_the_crd_has_a_lower_bound_and_no_upper_bound() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    field = schema["properties"]["rollout"]["properties"]["analysis"]["properties"]["maxMeanAbsDiff"]
    assert field["minimum"] == 0 and field["exclusiveMinimum"] is True
    assert "maximum" not in field
