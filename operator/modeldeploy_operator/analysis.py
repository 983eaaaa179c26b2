"""Canary analysis without I/O: which PromQL to ask, and what the answers mean.

`plan()` builds the queries for one check of one canary revision over a window aligned to the
step's start; the kopf shell runs them (`prom.Prometheus.run`) and `evaluate()` turns the answers into
an `AnalysisRecord` (query, window, sample size, value, threshold, verdict per check), which
`core.decide` stores in status and acts on.

Rules: fewer than `minRequests` canary requests in the window is Inconclusive (hold, never fail
on no data); a query that errors is Error (hold; Prometheus outages are not the canary's fault);
a value beyond its threshold is Failed. Overall verdict: Failed > Error > Inconclusive > Passed.
The comparative checks (`maxErrorRateIncrease`, `maxRefusalRateIncrease`: canary against stable
over the window since the canary started, anytime-valid) are planned and judged by `compare`;
they do not wait for `minRequests` (a canary failing its first 3 requests is Failed at the
configured confidence), but a Passed analysis still needs it.
`maxCostIncrease` (when set) asks for the canary's mean request time over stable's since the
canary started (as the compared checks) and multiplies it by the plan's pod price factor
(`cost.pod_price_factor`): the canary's cost per prediction over stable's; times within 1 ms of
each other count as equal (`cost.cost_check`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from modeldeploy_operator import compare, cost, shadow
from modeldeploy_operator.api import AnalysisRecord, AnalysisSpec, CheckRecord

REQUESTS_METRIC = "modeldeploy_requests_total"
DURATION_BUCKET_METRIC = "modeldeploy_request_duration_seconds_bucket"
OUTCOME_LABEL = "outcome"
# Only requests the model answered count (the server's `success`/`error` outcomes, i.e. 2xx and 5xx
# other than 503): rejections (4xx), not-ready answers (503) and clients that went away (499) can
# neither dilute a canary's error rate nor pull its p99 under the threshold.
ANSWERED = f'{OUTCOME_LABEL}=~"success|error"'
FAILED = f'{OUTCOME_LABEL}="error"'

REQUESTS = "requests"
ERRORS = "errors"
ERROR_RATE = "error-rate"
LATENCY_P99 = "latency-p99"


@dataclass(frozen=True)
class Query:
    name: str
    promql: str
    by: tuple[str, ...] = ()  # a vector query: one value per combination of these labels (`QueryResult.series`)


@dataclass(frozen=True)
class AnalysisPlan:
    revision: str
    step: int
    weight: int
    window_seconds: int
    queries: tuple[Query, ...]
    price_factor: float = 1.0  # maxCostIncrease: canary pod price per worker over stable's (`cost`)
    judge_window_seconds: int | None = None  # canary against stable: since the canary started (`compare`)
    shadow: bool = False  # a shadow step's check: paired answers on mirrored requests only (`shadow`)


@dataclass(frozen=True)
class QueryResult:
    """A scalar answer (None: empty result) or the error that prevented one; a vector query's
    answer is `series` (label values in the query's `by` order -> value)."""

    value: float | None = None
    error: str | None = None
    series: Mapping[tuple[str, ...], float] | None = None


def window_seconds(since_step_start: float, interval: int, scrape_interval: float) -> int:
    """W = min(time since the step started, interval), whole seconds, at least two scrapes."""
    floor = math.ceil(2 * scrape_interval)
    return max(int(min(since_step_start, interval)), floor)


def _selector(namespace: str, model: str, revision: str, extra: str = "") -> str:
    """The labels the queries filter on (`namespace` is added by Prometheus' scrape config)."""
    return f'{{namespace="{namespace}",model="{model}",revision="{revision}"{extra}}}'


def builtin_queries(namespace: str, model: str, revision: str, window: int) -> dict[str, str]:
    sel = _selector(namespace, model, revision, f",{ANSWERED}")
    errors = _selector(namespace, model, revision, f",{FAILED}")
    return {
        REQUESTS: f"sum(increase({REQUESTS_METRIC}{sel}[{window}s]))",
        ERRORS: f"sum(increase({REQUESTS_METRIC}{errors}[{window}s]))",
        LATENCY_P99: f"histogram_quantile(0.99, sum by (le) (rate({DURATION_BUCKET_METRIC}{sel}[{window}s])))",
    }


def substitute(query: str, namespace: str, model: str, revision: str, window: int) -> str:
    return (
        query.replace("{{revision}}", revision)
        .replace("{{name}}", model)
        .replace("{{namespace}}", namespace)
        .replace("{{window}}", f"{window}s")
    )


def plan(
    spec: AnalysisSpec,
    namespace: str,
    model: str,
    revision: str,
    step: int,
    weight: int,
    window: int,
    stable: str | None = None,
    price_factor: float = 1.0,
    since_canary: int | None = None,
    shadowing: bool = False,
) -> AnalysisPlan:
    if shadowing and stable is not None:  # the canary serves no user: only its paired answers are judged
        found = shadow.queries(namespace, model, revision, stable)
        return AnalysisPlan(revision, step, weight, window, tuple(Query(k, v) for k, v in found.items()), shadow=True)
    queries = [Query(k, v) for k, v in builtin_queries(namespace, model, revision, window).items()]
    if not spec.max_latency_p99_seconds:  # 0 or null: the absolute latency gate is off
        queries = [q for q in queries if q.name != LATENCY_P99]
    queries += [Query(m.name, substitute(m.query, namespace, model, revision, window)) for m in spec.metrics]
    judge_window = None if since_canary is None else max(since_canary, window)
    if spec.max_cost_increase is not None and stable is not None:
        cw = judge_window or window  # the canary's whole life: request times are noisy over seconds
        queries.append(
            Query(cost.COST_CHECK, cost.seconds_per_request_ratio_query(namespace, model, revision, stable, cw))
        )
        queries.append(Query(cost.COST_STABLE_SECONDS, cost.seconds_per_request_query(namespace, model, stable, cw)))
    compared = compare.plan_queries(spec, namespace, model, revision, stable, judge_window)
    queries += [Query(k, v, compare.vector_labels(k)) for k, v in compared.items()]
    return AnalysisPlan(revision, step, weight, window, tuple(queries), price_factor, judge_window)


def _count(n: float) -> str:
    """Request counts from increase() are extrapolated: 19.6 must not print as 20 next to '< 20'."""
    return f"{n:.0f}" if n == int(n) else f"{n:.1f}"


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def _bounds(lo: float | None, hi: float | None) -> str:
    parts = ([f">= {lo:g}"] if lo is not None else []) + ([f"<= {hi:g}"] if hi is not None else [])
    return " and ".join(parts)


def evaluate(spec: AnalysisSpec, p: AnalysisPlan, results: Mapping[str, QueryResult], now: str) -> AnalysisRecord:
    """Judge one check. The record's message is the decisive sentence for status and Events."""
    q = {query.name: query.promql for query in p.queries}
    w = p.window_seconds
    checks: list[CheckRecord] = []
    if p.shadow:
        checks = shadow.evaluate(spec, q, results)
        return AnalysisRecord(time=now, revision=p.revision, step=p.step, weight=p.weight, window_seconds=w,
                              verdict=_overall(checks), message=_message(checks), checks=checks)  # fmt: skip

    def record(name: str, key: str, verdict: Verdict, **fields: Any) -> None:
        checks.append(CheckRecord(name=name, query=q[key], window_seconds=w, verdict=verdict, **fields))

    def query_failed(name: str, key: str, res: QueryResult) -> None:
        record(name, key, "Error", message=f"Prometheus query failed: {res.error}")

    req = results.get(REQUESTS, QueryResult(error="not run"))
    n = req.value if req.value is not None and not math.isnan(req.value) else 0.0
    least = max(1, spec.min_requests)  # minRequests 0 still needs one request: no data never passes
    if req.error is not None:
        query_failed(REQUESTS, REQUESTS, req)
    elif n < least:
        msg = f"only {_count(n)} canary requests over {w}s (< minRequests {least})"
        record(REQUESTS, REQUESTS, "Inconclusive", samples=n, value=n, threshold=f">= {least}", message=msg)
    else:
        record(REQUESTS, REQUESTS, "Passed", samples=n, value=n, threshold=f">= {least}")
    enough = req.error is None and n >= least
    err = results.get(ERRORS, QueryResult(error="not run"))
    if err.error is not None:
        query_failed(ERROR_RATE, ERRORS, err)
    elif enough:
        errors = err.value if err.value is not None and not math.isnan(err.value) else 0.0  # no 5xx series: 0
        rate = errors / n
        bad = rate > spec.max_error_rate
        msg = f"canary error rate {_pct(rate)} {'>' if bad else '<='} {_pct(spec.max_error_rate)} over {w}s, n={n:.0f}"
        threshold = f"<= {spec.max_error_rate:g}"
        record(
            ERROR_RATE, ERRORS, "Failed" if bad else "Passed", samples=n, value=rate, threshold=threshold, message=msg
        )
    if spec.max_latency_p99_seconds:
        lat = results.get(LATENCY_P99, QueryResult(error="not run"))
        limit = spec.max_latency_p99_seconds
        if lat.error is not None:
            query_failed(LATENCY_P99, LATENCY_P99, lat)
        elif enough and lat.value is not None and not math.isnan(lat.value):
            bad = lat.value > limit
            msg = f"canary p99 latency {lat.value:.3g}s {'>' if bad else '<='} {limit:g}s over {w}s, n={n:.0f}"
            verdict: Verdict = "Failed" if bad else "Passed"
            record(
                LATENCY_P99, LATENCY_P99, verdict, samples=n, value=lat.value, threshold=f"<= {limit:g}", message=msg
            )
        elif enough:
            msg = "no latency histogram data for the canary"
            record(LATENCY_P99, LATENCY_P99, "Inconclusive", samples=n, threshold=f"<= {limit:g}", message=msg)
    for metric in spec.metrics:
        res = results.get(metric.name, QueryResult(error="not run"))
        bounds = _bounds(metric.min, metric.max)
        if res.error is not None:
            query_failed(metric.name, metric.name, res)
        elif not enough:  # like the built-ins: never judged on too few requests (the requests check says why)
            record(metric.name, metric.name, "Inconclusive", samples=n, value=res.value, threshold=bounds)
        elif res.value is None or math.isnan(res.value):
            record(
                metric.name, metric.name, "Inconclusive", samples=n, threshold=bounds, message=f"{metric.name}: no data"
            )
        else:
            v = res.value
            bad = (metric.min is not None and v < metric.min) or (metric.max is not None and v > metric.max)
            msg = f"{metric.name} {v:.4g} {'outside' if bad else 'within'} [{bounds}] over {w}s"
            verdict = "Failed" if bad else "Passed"
            record(metric.name, metric.name, verdict, samples=n, value=v, threshold=bounds, message=msg)
    if spec.max_cost_increase is not None and cost.COST_CHECK in q:
        res = results.get(cost.COST_CHECK, QueryResult(error="not run"))
        cap = f"<= {spec.max_cost_increase:g}"
        if res.error is not None:
            query_failed(cost.COST_CHECK, cost.COST_CHECK, res)
        elif enough:
            base = results.get(cost.COST_STABLE_SECONDS, QueryResult()).value
            said, ratio, text = cost.cost_check(spec.max_cost_increase, res.value, p.price_factor, base)
            record(cost.COST_CHECK, cost.COST_CHECK, said, samples=n, value=ratio, threshold=cap, message=text)
    checks += compare.evaluate(spec, q, p.judge_window_seconds, results)
    return AnalysisRecord(
        time=now,
        revision=p.revision,
        step=p.step,
        weight=p.weight,
        window_seconds=w,
        verdict=_overall(checks),
        message=_message(checks),
        checks=checks,
    )


Verdict = Literal["Passed", "Failed", "Inconclusive", "Error"]
SEVERITY: tuple[Verdict, ...] = ("Failed", "Error", "Inconclusive")


def _overall(checks: list[CheckRecord]) -> Verdict:
    for verdict in SEVERITY:
        if any(c.verdict == verdict for c in checks):
            return verdict
    return "Passed"


def _message(checks: list[CheckRecord]) -> str:
    verdict = _overall(checks)
    if verdict == "Passed":
        return "; ".join(c.message for c in checks if c.message) or "all checks passed"
    return "; ".join(c.message for c in checks if c.verdict == verdict and c.message)
