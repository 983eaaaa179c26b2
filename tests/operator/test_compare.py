"""Canary against stable in the operator's analysis: queries over the same window since the
canary started, records with both arms' n and the interval, absent fields change nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from modeldeploy_operator import compare
from modeldeploy_operator.analysis import QueryResult, evaluate, plan
from modeldeploy_operator.api import AnalysisSpec, ModelDeploymentStatus, parse_spec
from modeldeploy_operator.core import plan_analysis
from modeldeploy_operator.model import Config, Meta

NOW = "2026-12-02T00:30:00Z"
JUDGED = AnalysisSpec.model_validate({"minRequests": 50, "maxErrorRateIncrease": 0.01, "maxRefusalRateIncrease": 0.05})


def results(canary: tuple[float, float, float], stable: tuple[float, float, float]) -> dict[str, QueryResult]:
    """(requests, 5xx, 422) per arm, and the built-in canary queries over the step's window."""
    out = {"requests": QueryResult(canary[0]), "errors": QueryResult(canary[1]), "latency-p99": QueryResult(0.01)}
    for arm, (n, e5, e4) in (("canary", canary), ("stable", stable)):
        out |= {f"judge:{arm}:answered": QueryResult(n - e4), f"judge:{arm}:error-rate-increase": QueryResult(e5),
                f"judge:{arm}:contract": QueryResult(n),
                f"judge:{arm}:refusal-rate-increase": QueryResult(e4)}  # fmt: skip
    return out


def test_absent_fields_plan_exactly_todays_queries() -> None:
    plain = AnalysisSpec()
    assert [q.name for q in plan(plain, "ml", "iris", "can", 1, 10, 30, "stb", since_canary=600).queries] == [
        "requests", "errors", "latency-p99"]  # fmt: skip


def test_both_arms_are_asked_over_the_same_window_since_the_canary_started() -> None:
    p = plan(JUDGED, "ml", "iris", "can", 1, 10, 30, "stb", since_canary=600)
    q = {x.name: x.promql for x in p.queries}
    assert p.judge_window_seconds == 600
    assert q["judge:canary:error-rate-increase"] == (
        'sum(increase(modeldeploy_requests_total{namespace="ml",model="iris",revision="can",outcome="error"}[600s]))'
    )
    assert q["judge:stable:refusal-rate-increase"] == (
        'sum(increase(modeldeploy_requests_total{namespace="ml",model="iris",revision="stb",code="422"}[600s]))'
    )
    assert q["judge:stable:answered"].endswith('revision="stb",outcome=~"success|error"}[600s]))')
    assert q["judge:canary:contract"].endswith('revision="can",code=~"2..|5..|422",code!="503"}[600s]))')
    assert not any(
        k.startswith("judge:") for k in {x.name for x in plan(JUDGED, "ml", "iris", "can", 1, 10, 30).queries}
    )


def test_a_total_failure_is_rolled_back_on_three_requests_below_min_requests() -> None:
    p = plan(JUDGED, "ml", "iris", "can", 1, 10, 30, "stb", since_canary=40)
    rec = evaluate(JUDGED, p, results((3, 3, 0), (10_000, 10, 0)), NOW)
    assert rec.verdict == "Failed"
    check = next(c for c in rec.checks if c.name == "error-rate-increase")
    assert (check.samples, check.samples_stable, check.window_seconds) == (3, 10_000, 40)
    assert check.lower is not None and check.lower > 0.01 and check.threshold == "<= 0.01"
    assert "n canary 3, stable 10000" in rec.message


def test_a_healthy_canary_passes_only_with_the_evidence_and_says_how_much_more_it_needs() -> None:
    p = plan(JUDGED, "ml", "iris", "can", 1, 10, 30, "stb", since_canary=600)
    young = evaluate(JUDGED, p, results((200, 0, 2), (1800, 2, 18)), NOW)
    assert young.verdict == "Inconclusive"
    check = next(c for c in young.checks if c.name == "refusal-rate-increase")
    assert check.verdict == "Inconclusive" and check.more_requests is not None and check.more_requests > 0
    grown = evaluate(JUDGED, p, results((6000, 6, 60), (54_000, 54, 540)), NOW)
    assert grown.verdict == "Passed", grown.message
    assert all(c.upper is not None and c.upper <= (0.01 if "error" in c.name else 0.05)
               for c in grown.checks if c.name.endswith("increase"))  # fmt: skip


def test_a_failed_query_is_an_error_not_a_verdict() -> None:
    p = plan(JUDGED, "ml", "iris", "can", 1, 10, 30, "stb", since_canary=600)
    res = results((6000, 6, 60), (54_000, 54, 540)) | {"judge:stable:answered": QueryResult(error="timeout")}
    rec = evaluate(JUDGED, p, res, NOW)
    assert rec.verdict == "Error" and "timeout" in rec.message


SHIFT = AnalysisSpec.model_validate({"maxPredictionShift": 0.1})


def _vectors(canary: dict[str, float], stable: dict[str, float], kind: str = "classes") -> dict[str, QueryResult]:
    other = "bins" if kind == "classes" else "classes"
    out = {"requests": QueryResult(sum(canary.values())), "errors": QueryResult(0), "latency-p99": QueryResult(0.01)}
    for arm, counts in (("canary", canary), ("stable", stable)):
        out[f"judge:{arm}:{kind}"] = QueryResult(series={(k,): v for k, v in counts.items()})
        out[f"judge:{arm}:{other}"] = QueryResult(series={})
    return out


def test_prediction_shift_asks_both_arms_by_class_and_by_bin_as_vectors() -> None:
    p = plan(SHIFT, "ml", "iris", "can", 1, 10, 30, "stb", since_canary=600)
    q = {x.name: x for x in p.queries}
    assert q["judge:stable:classes"].promql == (
        'sum by (class) (increase(modeldeploy_prediction_class_total{namespace="ml",model="iris",revision="stb"}'
        "[600s]))"
    )
    assert q["judge:canary:bins"].by == ("bin",) and q["judge:canary:classes"].by == ("class",)
    assert q["requests"].by == ()


def test_a_canary_predicting_one_class_for_everything_is_failed_with_distance_interval_and_n() -> None:
    p = plan(SHIFT, "ml", "iris", "can", 1, 10, 30, "stb", since_canary=600)
    rec = evaluate(SHIFT, p, _vectors({"0": 60, "1": 0, "2": 0}, {"0": 180, "1": 170, "2": 190}), NOW)
    check = next(c for c in rec.checks if c.name == "prediction-shift")
    assert rec.verdict == "Failed", rec.message
    assert check.value is not None and abs(check.value - (1 - 180 / 540)) < 1e-9
    assert check.lower is not None and check.lower > 0.1 and (check.samples, check.samples_stable) == (60, 540)
    assert "prediction-shift 0.6667 in [" in rec.message and "(n canary 60, stable 540)" in rec.message


def test_the_same_mix_passes_and_young_canaries_hold() -> None:
    p = plan(SHIFT, "ml", "iris", "can", 1, 10, 30, "stb", since_canary=600)
    same = evaluate(SHIFT, p, _vectors({"0": 3000, "1": 3000, "2": 3000}, {"0": 9000, "1": 9000, "2": 9000}), NOW)
    assert same.verdict == "Passed", same.message
    young = evaluate(SHIFT, p, _vectors({"0": 10, "1": 10, "2": 10}, {"0": 900, "1": 900, "2": 900}), NOW)
    assert young.verdict == "Inconclusive" and "need about" in young.message
    none = evaluate(SHIFT, p, _vectors({}, {}), NOW)
    assert none.verdict == "Inconclusive" and "no predictions to compare yet" in none.message
    broken = _vectors({"0": 1, "1": 1}, {"0": 1, "1": 1}) | {"judge:stable:bins": QueryResult(error="timeout")}
    assert evaluate(SHIFT, p, broken, NOW).verdict == "Error"


def test_ordered_bins_are_preferred_and_sorted_numerically() -> None:
    p = plan(SHIFT, "ml", "iris", "can", 1, 10, 30, "stb", since_canary=600)
    stable = {str(b): 100.0 for b in range(12)}
    canary = {str(b): (200.0 if b < 6 else 0.0) for b in range(12)}  # scores all moved below the median
    rec = evaluate(SHIFT, p, _vectors(canary, stable, "bins"), NOW)
    check = next(c for c in rec.checks if c.name == "prediction-shift")
    assert rec.verdict == "Failed" and "prediction bins (12)" in check.message
    assert check.value is not None and abs(check.value - 0.5) < 1e-9


DRIFT = AnalysisSpec.model_validate({"maxInputDrift": 0.1})


def _drift_results(counts: dict[str, list[float]], shares: dict[str, list[float]]) -> dict[str, QueryResult]:
    inputs = {(f, str(b)): v for f, vs in counts.items() for b, v in enumerate(vs)}
    reference = {(f, str(b)): v for f, vs in shares.items() for b, v in enumerate(vs)}
    return {"requests": QueryResult(400), "errors": QueryResult(0), "latency-p99": QueryResult(0.01),
            "judge:canary:inputs": QueryResult(series=inputs),
            "judge:canary:reference": QueryResult(series=reference)}  # fmt: skip


def test_input_drift_names_every_feature_and_fails_on_the_shifted_one() -> None:
    p = plan(DRIFT, "ml", "iris", "can", 1, 10, 30, "stb", since_canary=600)
    q = {x.name: x for x in p.queries}
    assert q["judge:canary:reference"].promql == (
        'max by (feature, bin) (modeldeploy_input_reference_proportion{namespace="ml",model="iris",revision="can"})'
    )
    assert q["judge:canary:inputs"].by == ("feature", "bin") and "judge:stable:inputs" not in q
    shares = {"GR": [0.25] * 4, "RHOB": [0.25] * 4}
    rec = evaluate(DRIFT, p, _drift_results({"GR": [100] * 4, "RHOB": [0, 0, 100, 300]}, shares), NOW)
    check = next(c for c in rec.checks if c.name == "input-drift")
    assert rec.verdict == "Failed", rec.message
    assert check.value is not None and abs(check.value - 0.5) < 1e-9 and check.samples == 400
    assert "per feature: RHOB 0.5 [" in check.message and ", GR 0 [0, " in check.message
    assert check.features is not None and [f.name for f in check.features] == ["RHOB", "GR"]
    rhob, gr = check.features
    assert rhob.value == check.value and (rhob.lower, rhob.upper) == (check.lower, check.upper)
    assert gr.value == 0 and gr.lower == 0 and gr.upper < rhob.lower
    calm = evaluate(DRIFT, p, _drift_results({"GR": [1000] * 4, "RHOB": [1000] * 4}, shares), NOW)
    assert calm.verdict == "Passed", calm.message
    unprofiled = evaluate(DRIFT, p, _drift_results({"GR": [100] * 4}, {}), NOW)
    assert unprofiled.verdict == "Inconclusive" and "spec.model.reference" in unprofiled.message


def test_the_operator_plans_the_window_from_the_canarys_start() -> None:
    spec = parse_spec({"model": {"uri": "file:///m.skops", "version": "1"},
                       "rollout": {"analysis": {"maxErrorRateIncrease": 0.01}}})  # fmt: skip
    st = ModelDeploymentStatus(
        stable_revision="stb", canary_revision="can", current_step=1, canary_weight=10,
        step_started_at="2026-12-02T00:20:00Z", canary_started_at="2026-12-02T00:10:00Z",
    )  # fmt: skip
    p = plan_analysis(spec, st, datetime(2026, 12, 2, 0, 21, tzinfo=UTC), meta=Meta("iris", "ml"), config=Config())
    assert p is not None and p.judge_window_seconds == 660 and p.window_seconds == 30


def _buckets(cumulative: list[float], arm: str) -> dict[str, QueryResult]:
    return {f"judge:{arm}:le={le}": QueryResult(v) for le, v in zip(compare.LE, cumulative, strict=True)}


def test_p99_ratio_asks_every_bucket_of_both_arms_and_fails_a_slow_canary() -> None:
    spec = AnalysisSpec.model_validate({"maxLatencyP99Ratio": 1.5, "maxLatencyP99Seconds": None})
    p = plan(spec, "ml", "iris", "can", 1, 10, 30, "stb", since_canary=300)
    q = {x.name: x.promql for x in p.queries}
    assert len([k for k in q if k.startswith("judge:")]) == 2 * len(compare.LE)
    assert q["judge:stable:le=0.25"] == (
        "sum(increase(modeldeploy_request_duration_seconds_bucket"
        '{namespace="ml",model="iris",revision="stb",outcome=~"success|error",le="0.25"}[300s]))'
    )
    fast = [0, 0, 100, 2000, 3900, 3990, 4000, 4000, 4000, 4000, 4000, 4000, 4000, 4000, 4000]
    slow = [0, 0, 0, 0, 0, 0, 10, 100, 300, 396, 400, 400, 400, 400, 400]
    base = {"requests": QueryResult(400), "errors": QueryResult(0)}
    rec = evaluate(spec, p, base | _buckets(slow, "canary") | _buckets(fast, "stable"), NOW)
    check = next(c for c in rec.checks if c.name == "latency-p99-ratio")
    assert rec.verdict == "Failed" and check.lower is not None and check.lower > 1.5, check
    assert (check.samples, check.samples_stable) == (400, 4000)
    young = evaluate(spec, p, base | _buckets([v / 10 for v in fast], "canary") | _buckets(fast, "stable"), NOW)
    assert young.verdict == "Inconclusive" and "need about" in young.message  # 400 cannot pin a p99 yet
    same = evaluate(spec, p, base | _buckets(fast, "canary") | _buckets(fast, "stable"), NOW)
    assert same.verdict == "Passed", same.message
    empty = evaluate(spec, p, base | _buckets([0] * 15, "canary") | _buckets(fast, "stable"), NOW)
    assert empty.verdict == "Inconclusive" and "no answered requests yet" in empty.message


def test_a_vector_answer_is_keyed_by_its_labels() -> None:
    from modeldeploy_operator.prom import vector

    data = [{"metric": {"feature": "GR", "bin": "0"}, "value": [1.0, "12"]},
            {"metric": {"feature": "GR", "bin": "1"}, "value": [1.0, "NaN"]}]  # fmt: skip
    assert vector(data, ("feature", "bin")).series == {("GR", "0"): 12.0, ("GR", "1"): 0.0}
    assert vector([], ("bin",)).series == {}
    assert vector([{"metric": {}, "value": [1.0, "x"]}], ("bin",)).error == "not a number: [1.0, 'x']"
