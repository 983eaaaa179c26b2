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


def test_a_check_this_version_cannot_evaluate_holds_instead_of_passing() -> None:
    spec = AnalysisSpec.model_validate({"maxPredictionShift": 0.1})
    rec = evaluate(spec, plan(spec, "ml", "iris", "can", 1, 10, 30, "stb", since_canary=600),
                   results((6000, 0, 0), (54_000, 0, 0)), NOW)  # fmt: skip
    assert rec.verdict == "Inconclusive" and "prediction-shift is not evaluated" in rec.message


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
