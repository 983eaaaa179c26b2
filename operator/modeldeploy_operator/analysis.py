"""Canary analysis without I/O: which PromQL to ask, and what the answers mean.

`plan()` builds the queries for one check of one canary revision over a window aligned to the
step's start; the kopf shell runs them (`prom.run_plan`) and `evaluate()` turns the answers into
an `AnalysisRecord` (query, window, sample size, value, threshold, verdict per check), which
`core.decide` stores in status and acts on.

Rules: fewer than `minRequests` canary requests in the window is Inconclusive (hold, never fail
on no data); a query that errors is Error (hold; Prometheus outages are not the canary's fault);
a value beyond its threshold is Failed. Overall verdict: Failed > Error > Inconclusive > Passed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from modeldeploy_operator.api import AnalysisRecord, AnalysisSpec, CheckRecord

REQUESTS_METRIC = "modeldeploy_requests_total"
DURATION_BUCKET_METRIC = "modeldeploy_request_duration_seconds_bucket"
# Label names the queries filter on (`namespace` and `pod` are added by Prometheus' scrape config).
FILTER_LABELS = ("namespace", "model", "revision")
CODE_LABEL = "code"

REQUESTS = "requests"
ERRORS = "errors"
ERROR_RATE = "error-rate"
LATENCY_P99 = "latency-p99"


@dataclass(frozen=True)
class Query:
    name: str
    promql: str


@dataclass(frozen=True)
class AnalysisPlan:
    revision: str
    step: int
    weight: int
    window_seconds: int
    queries: tuple[Query, ...]


@dataclass(frozen=True)
class QueryResult:
    """A scalar answer (None: empty result) or the error that prevented one."""

    value: float | None = None
    error: str | None = None


def window_seconds(since_step_start: float, interval: int, scrape_interval: float) -> int:
    """W = min(time since the step started, interval), whole seconds, at least two scrapes."""
    floor = math.ceil(2 * scrape_interval)
    return max(int(min(since_step_start, interval)), floor)


def _selector(namespace: str, model: str, revision: str, extra: str = "") -> str:
    return f'{{namespace="{namespace}",model="{model}",revision="{revision}"{extra}}}'


def builtin_queries(namespace: str, model: str, revision: str, window: int) -> dict[str, str]:
    sel = _selector(namespace, model, revision)
    errors = _selector(namespace, model, revision, f',{CODE_LABEL}=~"5.."')
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
    spec: AnalysisSpec, namespace: str, model: str, revision: str, step: int, weight: int, window: int
) -> AnalysisPlan:
    queries = [Query(k, v) for k, v in builtin_queries(namespace, model, revision, window).items()]
    if spec.max_latency_p99_seconds is None:
        queries = [q for q in queries if q.name != LATENCY_P99]
    queries += [Query(m.name, substitute(m.query, namespace, model, revision, window)) for m in spec.metrics]
    return AnalysisPlan(revision, step, weight, window, tuple(queries))


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
    req = results.get(REQUESTS, QueryResult(error="not run"))
    n = req.value if req.value is not None and not math.isnan(req.value) else 0.0
    if req.error is not None:
        checks.append(
            CheckRecord(
                name=REQUESTS,
                query=q[REQUESTS],
                window_seconds=w,
                verdict="Error",
                message=f"Prometheus query failed: {req.error}",
            )
        )
    elif n < spec.min_requests:
        checks.append(
            CheckRecord(
                name=REQUESTS,
                query=q[REQUESTS],
                window_seconds=w,
                samples=n,
                value=n,
                threshold=f">= {spec.min_requests}",
                verdict="Inconclusive",
                message=f"only {_count(n)} canary requests over {w}s (< minRequests {spec.min_requests})",
            )
        )
    else:
        checks.append(
            CheckRecord(
                name=REQUESTS,
                query=q[REQUESTS],
                window_seconds=w,
                samples=n,
                value=n,
                threshold=f">= {spec.min_requests}",
                verdict="Passed",
            )
        )
    enough = req.error is None and n >= spec.min_requests and n > 0
    err = results.get(ERRORS, QueryResult(error="not run"))
    if err.error is not None:
        checks.append(
            CheckRecord(
                name=ERROR_RATE,
                query=q[ERRORS],
                window_seconds=w,
                verdict="Error",
                message=f"Prometheus query failed: {err.error}",
            )
        )
    elif enough:
        errors = err.value if err.value is not None and not math.isnan(err.value) else 0.0  # no 5xx series: 0
        rate = errors / n
        bad = rate > spec.max_error_rate
        msg = f"canary error rate {_pct(rate)} {'>' if bad else '<='} {_pct(spec.max_error_rate)} over {w}s, n={n:.0f}"
        checks.append(
            CheckRecord(
                name=ERROR_RATE,
                query=q[ERRORS],
                window_seconds=w,
                samples=n,
                value=rate,
                threshold=f"<= {spec.max_error_rate:g}",
                verdict="Failed" if bad else "Passed",
                message=msg,
            )
        )
    if spec.max_latency_p99_seconds is not None:
        lat = results.get(LATENCY_P99, QueryResult(error="not run"))
        limit = spec.max_latency_p99_seconds
        if lat.error is not None:
            checks.append(
                CheckRecord(
                    name=LATENCY_P99,
                    query=q[LATENCY_P99],
                    window_seconds=w,
                    verdict="Error",
                    message=f"Prometheus query failed: {lat.error}",
                )
            )
        elif enough and lat.value is not None and not math.isnan(lat.value):
            bad = lat.value > limit
            msg = f"canary p99 latency {lat.value:.3g}s {'>' if bad else '<='} {limit:g}s over {w}s, n={n:.0f}"
            checks.append(
                CheckRecord(
                    name=LATENCY_P99,
                    query=q[LATENCY_P99],
                    window_seconds=w,
                    samples=n,
                    value=lat.value,
                    threshold=f"<= {limit:g}",
                    verdict="Failed" if bad else "Passed",
                    message=msg,
                )
            )
        elif enough:
            checks.append(
                CheckRecord(
                    name=LATENCY_P99,
                    query=q[LATENCY_P99],
                    window_seconds=w,
                    samples=n,
                    threshold=f"<= {limit:g}",
                    verdict="Inconclusive",
                    message="no latency histogram data for the canary",
                )
            )
    for metric in spec.metrics:
        res = results.get(metric.name, QueryResult(error="not run"))
        bounds = _bounds(metric.min, metric.max)
        if res.error is not None:
            checks.append(
                CheckRecord(
                    name=metric.name,
                    query=q[metric.name],
                    window_seconds=w,
                    verdict="Error",
                    message=f"Prometheus query failed: {res.error}",
                )
            )
        elif res.value is None or math.isnan(res.value):
            checks.append(
                CheckRecord(
                    name=metric.name,
                    query=q[metric.name],
                    window_seconds=w,
                    samples=n,
                    threshold=bounds,
                    verdict="Inconclusive",
                    message=f"{metric.name}: no data",
                )
            )
        else:
            v = res.value
            bad = (metric.min is not None and v < metric.min) or (metric.max is not None and v > metric.max)
            msg = f"{metric.name} {v:.4g} {'outside' if bad else 'within'} [{bounds}] over {w}s"
            checks.append(
                CheckRecord(
                    name=metric.name,
                    query=q[metric.name],
                    window_seconds=w,
                    samples=n,
                    value=v,
                    threshold=bounds,
                    verdict="Failed" if bad else "Passed",
                    message=msg,
                )
            )
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
