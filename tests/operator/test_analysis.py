"""Analysis without I/O: windows, queries, verdicts and the decisive sentences; Prometheus answers parsed."""

from __future__ import annotations

import pytest

from modeldeploy_operator import analysis
from modeldeploy_operator.analysis import QueryResult, evaluate, plan, window_seconds
from modeldeploy_operator.api import AnalysisSpec
from modeldeploy_operator.prom import scalar

SPEC = AnalysisSpec.model_validate(
    {"intervalSeconds": 30, "minRequests": 50, "maxErrorRate": 0.01, "maxLatencyP99Seconds": 0.25,
     "metrics": [{"name": "refusals", "query": 'sum(rate(x{revision="{{revision}}",ns="{{namespace}}"}[{{window}}]))',
                  "max": 0.1}]}
)  # fmt: skip


@pytest.mark.parametrize(
    ("since", "interval", "scrape", "expected"),
    [(3.2, 30, 2.0, 4), (12.9, 30, 2.0, 12), (95, 30, 2.0, 30), (0, 5, 2.0, 4), (10, 5, 15.0, 30)],
)
def test_window_is_aligned_to_the_step_and_spans_two_scrapes(
    since: float, interval: int, scrape: float, expected: int
) -> None:
    assert window_seconds(since, interval, scrape) == expected


def test_plan_substitutes_and_filters_by_namespace_model_revision() -> None:
    p = plan(SPEC, "ml", "iris", "abc", step=1, weight=10, window=12)
    q = {x.name: x.promql for x in p.queries}
    # over the requests the model answered (outcome success|error; refusals and client errors apart)
    answered = 'namespace="ml",model="iris",revision="abc",outcome=~"success|error"'
    assert q["requests"] == f"sum(increase(modeldeploy_requests_total{{{answered}}}[12s]))"
    assert q["errors"] == (
        'sum(increase(modeldeploy_requests_total{namespace="ml",model="iris",revision="abc",outcome="error"}[12s]))'
    )
    assert q["latency-p99"] == (
        f"histogram_quantile(0.99, sum by (le) (rate(modeldeploy_request_duration_seconds_bucket{{{answered}}}[12s])))"
    )
    assert q["refusals"] == 'sum(rate(x{revision="abc",ns="ml"}[12s]))'
    for off in (None, 0):  # 0 is what survives kubectl apply on an existing object (a null removes the field)
        no_latency = AnalysisSpec.model_validate({"maxLatencyP99Seconds": off})
        assert "latency-p99" not in {x.name for x in plan(no_latency, "ml", "iris", "abc", 0, 10, 12).queries}


def judge(**values: QueryResult) -> analysis.AnalysisRecord:
    p = plan(SPEC, "ml", "iris", "abc", step=1, weight=10, window=30)
    base = {"requests": QueryResult(812), "errors": QueryResult(0), "latency-p99": QueryResult(0.05),
            "refusals": QueryResult(0.01)}  # fmt: skip
    base.update(values)
    return evaluate(SPEC, p, base, "2026-11-21T13:00:00Z")


def test_passed() -> None:
    rec = judge()
    assert rec.verdict == "Passed" and [c.verdict for c in rec.checks] == ["Passed"] * 4
    assert rec.window_seconds == 30 and rec.weight == 10 and rec.step == 1


def test_error_rate_breach_is_the_decisive_sentence() -> None:
    rec = judge(errors=QueryResult(34))
    assert rec.verdict == "Failed"
    assert rec.message == "canary error rate 4.19% > 1% over 30s, n=812"
    check = next(c for c in rec.checks if c.name == "error-rate")
    assert check.samples == 812 and check.value == pytest.approx(34 / 812) and check.threshold == "<= 0.01"


def test_no_5xx_series_means_zero_errors() -> None:
    assert judge(errors=QueryResult(None)).verdict == "Passed"


def test_latency_breach() -> None:
    rec = judge(**{"latency-p99": QueryResult(0.8)})
    assert rec.verdict == "Failed" and rec.message == "canary p99 latency 0.8s > 0.25s over 30s, n=812"


def test_latency_gate_at_0_is_off_not_a_limit_of_0_seconds() -> None:
    off = SPEC.model_copy(update={"max_latency_p99_seconds": 0})
    p = plan(off, "ml", "iris", "abc", step=1, weight=10, window=30)
    results = {"requests": QueryResult(812), "errors": QueryResult(0), "latency-p99": QueryResult(9.0),
               "refusals": QueryResult(0.01)}  # fmt: skip
    rec = evaluate(off, p, results, "2026-11-21T13:00:00Z")
    assert rec.verdict == "Passed" and "latency-p99" not in {c.name for c in rec.checks}, rec


def test_too_few_requests_is_inconclusive_even_if_they_all_failed() -> None:
    rec = judge(requests=QueryResult(12), errors=QueryResult(12))
    assert rec.verdict == "Inconclusive"
    assert rec.message == "only 12 canary requests over 30s (< minRequests 50)"
    assert judge(requests=QueryResult(None)).verdict == "Inconclusive"


def test_prometheus_errors_are_error_not_failed() -> None:
    rec = judge(requests=QueryResult(error="HTTP Status Code 503"), errors=QueryResult(error="HTTP Status Code 503"))
    assert rec.verdict == "Error" and "Prometheus query failed: HTTP Status Code 503" in rec.message


def test_custom_metric_bounds_and_no_data() -> None:
    assert judge(refusals=QueryResult(0.5)).message == "refusals 0.5 outside [<= 0.1] over 30s"
    assert judge(refusals=QueryResult(None)).verdict == "Inconclusive"


@pytest.mark.parametrize(
    ("data", "value", "error"),
    [
        ([], None, None),
        ([{"metric": {}, "value": [1.0, "812"]}], 812.0, None),
        ([{"metric": {}, "value": [1.0, "NaN"]}], None, None),
        ([1.0, "0.25"], 0.25, None),
        ([{"metric": {"a": "1"}, "value": [1, "1"]}, {"metric": {"a": "2"}, "value": [1, "2"]}], None,
         "query returned 2 series; aggregate it to one (sum, max, ...)"),
    ],
)  # fmt: skip
def test_prometheus_answers_become_scalars(data: object, value: float | None, error: str | None) -> None:
    assert scalar(data) == QueryResult(value=value, error=error)


# ------------------------------------------------------------------ issue 11, M1-M3
def _answers(n: float, errors: float = 0, p99: float = 0.1, custom: float | None = 0.0) -> dict[str, QueryResult]:
    return {"requests": QueryResult(value=n), "errors": QueryResult(value=errors),
            "latency-p99": QueryResult(value=p99), "refusals": QueryResult(value=custom)}  # fmt: skip


def test_min_requests_0_never_passes_a_canary_that_got_no_request() -> None:
    spec = SPEC.model_copy(update={"min_requests": 0, "metrics": []})
    rec = evaluate(spec, plan(spec, "ml", "iris", "abc", 1, 10, 12), _answers(0), "t")
    assert rec.verdict == "Inconclusive" and rec.message == "only 0 canary requests over 12s (< minRequests 1)"


def test_custom_metrics_are_not_judged_below_min_requests() -> None:
    # 2 of 3 requests refused: a success-ratio metric would fail the canary on three requests
    rec = evaluate(SPEC, plan(SPEC, "ml", "iris", "abc", 1, 10, 12), _answers(3, custom=0.33), "t")
    assert rec.verdict == "Inconclusive"
    assert {c.name: c.verdict for c in rec.checks}["refusals"] == "Inconclusive"


@pytest.mark.parametrize("name", ["requests", "errors", "error-rate", "latency-p99"])
def test_custom_metric_names_cannot_replace_the_built_in_measurements(name: str) -> None:
    from modeldeploy_operator.api import SpecError, parse_spec
    from tests.operator.sim import spec_dict

    metric = {"name": name, "query": 'sum(increase(x{model="{{name}}"}[{{window}}]))', "min": 100}
    with pytest.raises(SpecError, match=f"spec.rollout.analysis.metrics\\[0\\].name: .*'{name}' is reserved"):
        parse_spec(spec_dict(analysis={"metrics": [metric]}))
