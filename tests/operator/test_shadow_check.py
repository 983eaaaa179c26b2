"""The shadow step's check (`shadow.evaluate`) and its API fields: figures a person can verify."""

from __future__ import annotations

import pytest

from modeldeploy_operator import shadow
from modeldeploy_operator.analysis import QueryResult
from modeldeploy_operator.api import AnalysisSpec, CheckRecord, SpecError, parse_spec
from tests.operator.sim import spec_dict

Q = shadow.queries("ml", "iris", "c", "s")


def judged(pairs: float, agree: float, diff: float = 0.0, **fields: float) -> dict[str, CheckRecord]:
    spec = AnalysisSpec(min_requests=50, **fields)  # type: ignore[arg-type]
    values = {shadow.PAIRS: pairs, shadow.AGREEMENTS: agree, shadow.ABS_DIFF: diff}
    results = {k: QueryResult(value=values.get(k, 0.0)) for k in Q}
    return {c.name: c for c in shadow.evaluate(spec, Q, results)}


def test_agreement_interval_after_10000_pairs_is_within_half_a_point() -> None:
    c = judged(10_000, 9_900, min_agreement=0.98)[shadow.AGREEMENT]
    assert c.value == 0.99 and c.verdict == "Passed"
    assert c.lower is not None and c.upper is not None
    assert 0.985 <= c.lower < 0.99 < c.upper <= 0.995


@pytest.mark.parametrize(
    ("pairs", "agree", "verdict"),
    [(2000, 1800, "Failed"), (30, 30, "Inconclusive"), (5000, 5000, "Passed"), (300, 294, "Inconclusive")],
)
def test_agreement_verdicts(pairs: float, agree: float, verdict: str) -> None:
    assert judged(pairs, agree, min_agreement=0.98)[shadow.AGREEMENT].verdict == verdict


def test_mean_abs_diff_bounds_and_verdicts() -> None:
    ok = judged(10_000, 10_000, diff=10.0, max_mean_abs_diff=0.01)[shadow.MEAN_ABS_DIFF]
    assert ok.verdict == "Passed" and ok.value == 0.001 and ok.upper is not None and ok.upper <= 0.01
    bad = judged(10_000, 10_000, diff=500.0, max_mean_abs_diff=0.01)[shadow.MEAN_ABS_DIFF]
    assert bad.verdict == "Failed" and bad.lower is not None and bad.lower > 0.01


def test_a_regressor_threshold_in_its_own_unit() -> None:
    """maxMeanAbsDiff 2.5 (say, minutes of a delivery-time regressor): the servers cap each difference at
    25, so answers 1 minute apart pass, answers 4 minutes apart fail, and a canary 100 minutes off on
    a fifth of the rows fails although most of its rows are exact."""
    assert shadow.diff_cap(2.5) == 25.0 and shadow.diff_cap(None) == 1.0
    close = judged(5_000, 0, diff=5_000 * 1.0, max_mean_abs_diff=2.5)[shadow.MEAN_ABS_DIFF]
    assert close.verdict == "Passed" and close.value == 1.0
    assert close.upper is not None and 1.0 < close.upper <= 2.5, close.message
    assert "each capped at 25" in close.message
    far = judged(5_000, 0, diff=5_000 * 4.0, max_mean_abs_diff=2.5)[shadow.MEAN_ABS_DIFF]
    assert far.verdict == "Failed" and far.lower is not None and far.lower > 2.5
    wild = judged(5_000, 4_000, diff=1_000 * 25.0, max_mean_abs_diff=2.5)[shadow.MEAN_ABS_DIFF]
    assert wild.verdict == "Failed", wild.message


def test_a_shadow_target_carries_the_cap_to_the_servers() -> None:
    from modeldeploy_operator.model import Decision, Meta, PodState, RevisionState, ShadowTarget
    from modeldeploy_operator.shadowctl import ShadowControl

    sent: list[dict[str, object]] = []
    control = ShadowControl(b"k" * 32, 15)
    control._send = lambda meta, address, body: sent.append(body)  # type: ignore[method-assign]
    target = ShadowTarget("s", "c", "iris-canary", 25, 0.0, 0, shadow.diff_cap(2.5))
    pods = {"s": RevisionState(1, (PodState("s-0", ready=True, ip="198.18.0.5"),)),
            "c": RevisionState(1, (PodState("c-0", ready=True, ip="198.18.0.6"),))}  # fmt: skip
    control.push(Decision(status=None, shadow=target), Meta("iris", "ml", "u"), pods)  # type: ignore[arg-type]
    assert sent and sent[0]["diffCap"] == 25.0


def test_no_pairs_is_inconclusive_and_a_failed_query_is_error() -> None:
    assert judged(0, 0, min_agreement=0.98)[shadow.AGREEMENT].verdict == "Inconclusive"
    spec = AnalysisSpec(min_agreement=0.98)
    results = {k: QueryResult(error="connection refused") for k in Q}
    (c,) = shadow.evaluate(spec, Q, results)
    assert c.verdict == "Error" and "connection refused" in c.message


def shadow_spec(steps: list[dict[str, object]], **analysis: object) -> dict[str, object]:
    return spec_dict(steps=steps, analysis={"intervalSeconds": 5, **analysis})


@pytest.mark.parametrize(
    ("steps", "analysis", "message"),
    [
        ([{"shadow": {"seconds": 60, "percent": 25}}], {}, "steps[0].shadow needs analysis.minAgreement"),
        ([{"setWeight": 10}, {"shadow": {"seconds": 60, "percent": 25}}], {"minAgreement": 0.98},
         "steps[1].shadow: a shadow step must come before the first setWeight above 0"),
        ([{"shadow": {"seconds": 60, "percent": 0}}], {"minAgreement": 0.98}, "steps[0].shadow.percent"),
        ([{"shadow": {"seconds": 0, "percent": 5}}], {"minAgreement": 0.98}, "steps[0].shadow.seconds"),
        ([{"shadow": {"seconds": 9, "percent": 5}}], {"minAgreement": 1}, "analysis.minAgreement"),
        ([{"shadow": {"seconds": 9, "percent": 5}}], {"maxMeanAbsDiff": -2.5}, "analysis.maxMeanAbsDiff"),
    ],
)  # fmt: skip
def test_bad_shadow_specs_are_refused_naming_the_field(
    steps: list[dict[str, object]], analysis: dict[str, object], message: str
) -> None:
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(shadow_spec(steps, **analysis))


def test_a_shadow_step_parses_with_its_contract_names() -> None:
    spec = parse_spec(
        shadow_spec(
            [{"shadow": {"seconds": 120, "percent": 25}}, {"setWeight": 10}],
            minAgreement=0.98, maxMeanAbsDiff=0.02, agreementTolerance=0.001, shadow={"logDisagreements": 20},
        )
    )  # fmt: skip
    a = spec.rollout.analysis
    assert spec.rollout.steps[0].shadow is not None and spec.rollout.steps[0].shadow.percent == 25
    assert (a.min_agreement, a.max_mean_abs_diff, a.agreement_tolerance, a.shadow.log_disagreements) == (
        0.98, 0.02, 0.001, 20)  # fmt: skip


def test_the_pod_cache_keeps_the_address_shadow_control_calls_go_to() -> None:
    from modeldeploy_operator.cache import slim_pod
    from modeldeploy_operator.kube import pod_state

    pod = {"metadata": {"name": "iris-abc-1", "labels": {}}, "status": {
        "phase": "Running", "podIP": "198.18.0.7", "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip
    state = pod_state(slim_pod(pod))
    assert state.ready and state.ip == "198.18.0.7"
