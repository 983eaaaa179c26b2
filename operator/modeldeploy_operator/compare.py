"""Canary against stable over the same window: the judge's rate checks as PromQL and as records.

Owned here: the queries behind `maxErrorRateIncrease` and `maxRefusalRateIncrease` (answered
requests and their 5xx, rows that reached the input contract and their 422s, of the canary and of
the stable revision, both over the window since the canary started:
cumulative counts are what the anytime-valid judge is valid for, however often it looks) and
their judgement (`judge.rate_increase`) into `CheckRecord`s with both arms' n, the estimate and
the interval. Called by `analysis.plan` and `analysis.evaluate`; pure.

`maxLatencyP99Ratio` asks each histogram bucket of answered requests of both revisions (one scalar
query per bucket) and judges the ratio at bucket resolution (`judge.latency_ratio`). Not wired
yet, for want of server series: `maxPredictionShift` and `maxInputDrift` (per-class / per-bin
counters). They are reported as Inconclusive with that reason when set, so that a rollout never
promotes on a check nobody evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from modeldeploy_operator import judge
from modeldeploy_operator.api import AnalysisSpec, CheckRecord

if TYPE_CHECKING:
    from modeldeploy_operator.analysis import QueryResult

REQUESTS_METRIC = "modeldeploy_requests_total"
ERROR_INCREASE = "error-rate-increase"
REFUSAL_INCREASE = "refusal-rate-increase"
# Denominators: the requests the model answered (as the built-in error rate: 2xx and 5xx but 503),
# and the rows that reached the input contract (those plus the 422s it refused).
ANSWERED = ("answered", 'outcome=~"success|error"')
CONTRACT = ("contract", 'code=~"2..|5..|422",code!="503"')
# check name -> (spec attribute, denominator, events matcher, what is counted)
RATE_CHECKS = {
    ERROR_INCREASE: ("max_error_rate_increase", ANSWERED, 'outcome="error"', "5xx share of answered requests"),
    REFUSAL_INCREASE: ("max_refusal_rate_increase", CONTRACT, 'code="422"', "422 share of rows"),
}
# check name -> (spec attribute, why this operator version cannot evaluate it yet)
NOT_WIRED = {
    "prediction-shift": ("max_prediction_shift", "the server exports no per-class/per-bin prediction counters yet"),
    "input-drift": ("max_input_drift", "the server exports no per-feature bin counters yet"),
}
ARMS = ("canary", "stable")
LATENCY_RATIO = "latency-p99-ratio"
DURATION_BUCKET_METRIC = "modeldeploy_request_duration_seconds_bucket"
# The server's histogram buckets as it renders `le` (a contract, pinned by test_metric_contract);
# one scalar query per bucket and arm, since the query runner reads scalars.
LE = ("0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0",
      "10.0", "+Inf")  # fmt: skip


def _key(arm: str, what: str) -> str:
    """Query names with a colon: custom metric names cannot contain one, so they never collide."""
    return f"judge:{arm}:{what}"


def _threshold(spec: AnalysisSpec, attribute: str) -> float | None:
    value = getattr(spec, attribute)
    return None if value is None else float(value)


def active(spec: AnalysisSpec) -> bool:
    attributes = [a for a, _, _, _ in RATE_CHECKS.values()] + [a for a, _ in NOT_WIRED.values()]
    return any(_threshold(spec, a) is not None for a in [*attributes, "max_latency_p99_ratio"])


def queries(spec: AnalysisSpec, namespace: str, model: str, canary: str, stable: str, window: int) -> dict[str, str]:
    """Both arms' counts over the same window (seconds since the canary started)."""
    out: dict[str, str] = {}
    for arm, revision in zip(ARMS, (canary, stable), strict=True):
        sel = f'namespace="{namespace}",model="{model}",revision="{revision}"'
        for name, (attr, (denominator, n_matcher), matcher, _) in RATE_CHECKS.items():
            if _threshold(spec, attr) is None:
                continue
            out[_key(arm, denominator)] = f"sum(increase({REQUESTS_METRIC}{{{sel},{n_matcher}}}[{window}s]))"
            out[_key(arm, name)] = f"sum(increase({REQUESTS_METRIC}{{{sel},{matcher}}}[{window}s]))"
        if spec.max_latency_p99_ratio is not None:
            for le in LE:  # answered requests only, like the built-in p99
                bucket = f'{sel},outcome=~"success|error",le="{le}"'
                out[_key(arm, f"le={le}")] = f"sum(increase({DURATION_BUCKET_METRIC}{{{bucket}}}[{window}s]))"
    return out


def _count(res: QueryResult) -> float:
    """No series (or NaN) counts as 0, like the built-in error query; increase() may extrapolate."""
    return 0.0 if res.value is None or math.isnan(res.value) else max(0.0, float(res.value))


def evaluate(
    spec: AnalysisSpec, promql: Mapping[str, str], window: int | None, results: Mapping[str, QueryResult]
) -> list[CheckRecord]:
    """One record per configured comparative check; Error when a query of it failed."""
    records: list[CheckRecord] = []
    for name, (attr, (denominator, _), _, what) in RATE_CHECKS.items():
        threshold = _threshold(spec, attr)
        if threshold is None or _key("canary", name) not in promql:
            continue
        keys = [_key(arm, k) for arm in ARMS for k in (denominator, name)]
        query = " ; ".join(promql[k] for k in keys)
        failed = [results[k].error for k in keys if k in results and results[k].error is not None]
        missing = [k for k in keys if k not in results]
        if failed or missing:
            text = f"Prometheus query failed: {failed[0] if failed else 'not run'}"
            records.append(CheckRecord(name=name, query=query, window_seconds=window, verdict="Error", message=text))
            continue
        nc, kc, ns, ks = (_count(results[k]) for k in keys)
        kc, ks = min(kc, nc), min(ks, ns)  # extrapolated increase() may round a share above 1
        d = judge.rate_increase(name, kc, nc, ks, ns, threshold, spec.confidence)
        records.append(
            CheckRecord(
                name=name, query=query, window_seconds=window, samples=nc, samples_stable=ns, value=d.estimate,
                lower=d.lower, upper=d.upper, more_requests=d.more_canary_requests, threshold=f"<= {threshold:g}",
                verdict=d.verdict, message=f"{what}, canary minus stable, since the canary started: "
                + d.describe(),
            )
        )  # fmt: skip
    if spec.max_latency_p99_ratio is not None and _key("canary", f"le={LE[-1]}") in promql:
        records.append(_latency(spec, spec.max_latency_p99_ratio, promql, window, results))
    for name, (attr, why) in NOT_WIRED.items():
        threshold = _threshold(spec, attr)
        if threshold is not None:
            text = f"{name} is not evaluated by this operator version ({why}): hold, never promote on it"
            records.append(CheckRecord(name=name, query="", threshold=f"<= {threshold:g}", verdict="Inconclusive",
                                       message=text))  # fmt: skip
    return records


def _latency(
    spec: AnalysisSpec, threshold: float, promql: Mapping[str, str], window: int | None,
    results: Mapping[str, QueryResult],
) -> CheckRecord:  # fmt: skip
    """Canary p99 over stable p99 from both arms' cumulative bucket counts (see `judge.latency_ratio`)."""
    keys = {arm: [_key(arm, f"le={le}") for le in LE] for arm in ARMS}
    query = promql[keys["canary"][-1]] + f" (and each of the {len(LE)} le buckets, both revisions)"
    limit = f"<= {threshold:g}"
    failed = [results[k].error for ks in keys.values() for k in ks if k in results and results[k].error is not None]
    if failed or any(k not in results for ks in keys.values() for k in ks):
        text = f"Prometheus query failed: {failed[0] if failed else 'not run'}"
        return CheckRecord(name=LATENCY_RATIO, query=query, window_seconds=window, verdict="Error", message=text)
    # increase() extrapolates each bucket on its own: keep the cumulative counts monotone
    canary, stable = (np.maximum.accumulate([_count(results[k]) for k in keys[arm]]) for arm in ARMS)
    if canary[-1] <= 0 or stable[-1] <= 0:
        text = f"{LATENCY_RATIO}: no answered requests yet (canary {canary[-1]:.0f}, stable {stable[-1]:.0f})"
        return CheckRecord(name=LATENCY_RATIO, query=query, window_seconds=window, threshold=limit,
                           verdict="Inconclusive", message=text)  # fmt: skip
    edges = [float(le) for le in LE[:-1]]
    d = judge.latency_ratio(edges, canary.tolist(), stable.tolist(), threshold, spec.confidence)
    return CheckRecord(
        name=LATENCY_RATIO, query=query, window_seconds=window, samples=d.n_canary, samples_stable=d.n_stable,
        value=d.estimate if math.isfinite(d.estimate) else None, lower=d.lower,
        upper=d.upper if math.isfinite(d.upper) else None, threshold=limit, verdict=d.verdict,
        message="p99 of answered requests, canary over stable, since the canary started, at bucket resolution: "
        + d.describe(),
    )  # fmt: skip


def plan_queries(
    spec: AnalysisSpec, namespace: str, model: str, canary: str, stable: str | None, window: int | None
) -> dict[str, str]:
    """The comparative queries for `analysis.plan`, none when no check is set or no stable runs."""
    if stable is None or window is None or not active(spec):
        return {}
    return queries(spec, namespace, model, canary, stable, window)
