"""Canary against stable over the same window: the judge's rate checks as PromQL and as records.

Owned here: the queries behind `maxErrorRateIncrease` and `maxRefusalRateIncrease` (answered
requests and their 5xx, rows that reached the input contract and their 422s, of the canary and of
the stable revision, both over the window since the canary started:
cumulative counts are what the anytime-valid judge is valid for, however often it looks) and
their judgement (`judge.rate_increase`) into `CheckRecord`s with both arms' n, the estimate and
the interval. Called by `analysis.plan` and `analysis.evaluate`; pure.

`maxLatencyP99Ratio` asks each histogram bucket of answered requests of both revisions (one scalar
query per bucket) and judges the ratio at bucket resolution (`judge.latency_ratio`).

`maxPredictionShift` asks both revisions' rows per predicted class and per prediction bin over the
same window (vector queries, `sum by (class)` / `sum by (bin)`: the operator does not know the
labels; the server creates every series at 0) and judges the total-variation distance
(`judge.prediction_shift`): over the ordered bins when the server exports them (binary probability
scores, regressor values), else over the classes. `maxInputDrift` asks the canary's rows per input
feature and bin and the reference profile's training share of each bin, which the server exports
from the profile it verified (`modeldeploy_input_reference_proportion`: the operator never fetches
the profile itself), and judges the largest per-feature distance (`judge.input_drift`); every
feature's figure is in the record's message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from modeldeploy_operator import judge
from modeldeploy_operator.api import AnalysisSpec, CheckRecord, FeatureDistance

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
PREDICTION_SHIFT = "prediction-shift"
INPUT_DRIFT = "input-drift"
CLASS_METRIC = "modeldeploy_prediction_class_total"
BIN_METRIC = "modeldeploy_prediction_bin_total"
INPUT_BIN_METRIC = "modeldeploy_input_bin_total"
REFERENCE_METRIC = "modeldeploy_input_reference_proportion"
# vector queries: key suffix -> the labels of its series
VECTORS = {"classes": ("class",), "bins": ("bin",), "inputs": ("feature", "bin"), "reference": ("feature", "bin")}
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


def vector_labels(key: str) -> tuple[str, ...]:
    """The `by` labels of a vector query of `queries` (empty for a scalar one)."""
    return VECTORS.get(key.rsplit(":", 1)[-1], ()) if key.startswith("judge:") else ()


def active(spec: AnalysisSpec) -> bool:
    attributes = [a for a, _, _, _ in RATE_CHECKS.values()]
    extra = ["max_latency_p99_ratio", "max_prediction_shift", "max_input_drift"]
    return any(_threshold(spec, a) is not None for a in [*attributes, *extra])


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
        if spec.max_prediction_shift is not None:
            out[_key(arm, "classes")] = f"sum by (class) (increase({CLASS_METRIC}{{{sel}}}[{window}s]))"
            out[_key(arm, "bins")] = f"sum by (bin) (increase({BIN_METRIC}{{{sel}}}[{window}s]))"
    if spec.max_input_drift is not None:
        inputs, reference = input_queries(namespace, model, canary, window)
        out[_key("canary", "inputs")], out[_key("canary", "reference")] = inputs, reference
    return out


def input_queries(namespace: str, model: str, revision: str, window: int) -> tuple[str, str]:
    """A revision's rows per (feature, bin) over `window` seconds, and its reference shares per (feature, bin)
    (the canary's `maxInputDrift` and the stable's `driftwatch`)."""
    sel = f'namespace="{namespace}",model="{model}",revision="{revision}"'
    return (f"sum by (feature, bin) (increase({INPUT_BIN_METRIC}{{{sel}}}[{window}s]))",
            f"max by (feature, bin) ({REFERENCE_METRIC}{{{sel}}})")  # fmt: skip


def _count(res: QueryResult) -> float:
    """No series (or NaN) counts as 0, like the built-in error query; increase() may extrapolate."""
    return _nonneg(res.value)


def _nonneg(value: float | None) -> float:
    return 0.0 if value is None or math.isnan(value) else max(0.0, float(value))


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
    if spec.max_prediction_shift is not None and _key("canary", "classes") in promql:
        records.append(_shift(spec, spec.max_prediction_shift, promql, window, results))
    if spec.max_input_drift is not None and _key("canary", "inputs") in promql:
        records.append(_drift(spec, spec.max_input_drift, promql, window, results))
    return records


def _series(keys: list[str], promql: Mapping[str, str], results: Mapping[str, QueryResult]) -> str | None:
    """The error that keeps these vector queries from an answer, if any."""
    for k in keys:
        res = results.get(k)
        if res is None or res.error is not None or res.series is None:
            return f"Prometheus query failed: {'not run' if res is None else res.error or 'not a vector'}"
    return None


def _shift(
    spec: AnalysisSpec, threshold: float, promql: Mapping[str, str], window: int | None,
    results: Mapping[str, QueryResult],
) -> CheckRecord:  # fmt: skip
    """TV distance of the canary's prediction distribution from stable's (`judge.prediction_shift`)."""
    keys = [_key(arm, kind) for kind in ("bins", "classes") for arm in ARMS]
    query = " ; ".join(promql[k] for k in keys)
    limit = f"<= {threshold:g}"
    failed = _series(keys, promql, results)
    if failed is not None:
        return CheckRecord(name=PREDICTION_SHIFT, query=query, window_seconds=window, verdict="Error", message=failed)
    kind, ordered = "bins", True
    if not all(results[_key(arm, "bins")].series for arm in ARMS):
        kind, ordered = "classes", False
    arms = [{k[0]: _nonneg(v) for k, v in (results[_key(arm, kind)].series or {}).items()}
            for arm in ARMS]  # fmt: skip
    labels = sorted(set(arms[0]) | set(arms[1]), key=(lambda b: int(b) if b.isdigit() else -1) if ordered else str)
    canary, stable = ([a.get(label, 0.0) for label in labels] for a in arms)
    nc, ns = sum(canary), sum(stable)
    if len(labels) < 2 or nc <= 0 or ns <= 0:
        text = (f"{PREDICTION_SHIFT}: no predictions to compare yet (canary {nc:.0f}, stable {ns:.0f} rows over "
                f"{len(labels)} classes/bins; the server counts classes of classifiers, bins of binary "
                "probabilities and of regressors with a reference profile)")  # fmt: skip
        return CheckRecord(name=PREDICTION_SHIFT, query=query, window_seconds=window, threshold=limit,
                           verdict="Inconclusive", message=text)  # fmt: skip
    d = judge.prediction_shift(canary, stable, threshold, spec.confidence, ordered=ordered)
    what = "prediction bins" if ordered else "predicted classes"
    return CheckRecord(
        name=PREDICTION_SHIFT, query=query, window_seconds=window, samples=d.n_canary, samples_stable=d.n_stable,
        value=d.estimate, lower=d.lower, upper=d.upper, more_requests=d.more_canary_requests, threshold=limit,
        verdict=d.verdict, message=f"total-variation distance of {what} ({len(labels)}), canary against stable, "
        "since the canary started: " + d.describe(),
    )  # fmt: skip


def _drift(
    spec: AnalysisSpec, threshold: float, promql: Mapping[str, str], window: int | None,
    results: Mapping[str, QueryResult],
) -> CheckRecord:  # fmt: skip
    """Largest per-feature TV distance of the canary's inputs from the reference (`judge.input_drift`)."""
    keys = [_key("canary", "inputs"), _key("canary", "reference")]
    query = " ; ".join(promql[k] for k in keys)
    limit = f"<= {threshold:g}"
    failed = _series(keys, promql, results)
    if failed is not None:
        return CheckRecord(name=INPUT_DRIFT, query=query, window_seconds=window, verdict="Error", message=failed)
    d, profiled = input_drift_of(results[keys[0]].series or {}, results[keys[1]].series or {}, threshold,
                                 spec.confidence)  # fmt: skip
    if d is None:
        text = (f"{INPUT_DRIFT}: no binned canary inputs against a reference profile yet ({profiled} profiled "
                "features; the server exports reference shares only when it loaded spec.model.reference)")  # fmt: skip
        return CheckRecord(name=INPUT_DRIFT, query=query, window_seconds=window, threshold=limit,
                           verdict="Inconclusive", message=text)  # fmt: skip
    ranked = sorted(d.per_feature.items(), key=lambda kv: -kv[1][0])
    per = ", ".join(f"{f} {e:.3g} [{lo:.3g}, {hi:.3g}]" for f, (e, lo, hi) in ranked)
    distances = [FeatureDistance(name=f, value=e, lower=lo, upper=hi) for f, (e, lo, hi) in ranked]
    return CheckRecord(
        name=INPUT_DRIFT, query=query, window_seconds=window, samples=d.n_canary, value=d.estimate, lower=d.lower,
        upper=d.upper, more_requests=d.more_canary_requests, threshold=limit, verdict=d.verdict, features=distances,
        message="largest per-feature total-variation distance of the canary's inputs from the reference profile, "
        f"since the canary started: {d.describe()}; per feature: {per}",
    )  # fmt: skip


def input_drift_of(
    inputs: Mapping[tuple[str, ...], float], reference: Mapping[tuple[str, ...], float], threshold: float,
    confidence: float, look_ahead: bool = True,
) -> tuple[judge.Decision | None, int]:  # fmt: skip
    """`judge.input_drift` of the (feature, bin) series of `input_queries`, over the features that
    have both counts and reference shares with the same bins; (None, features) when none has rows."""
    counts, shares = _by_feature(inputs), _by_feature(reference)
    features = sorted(f for f in shares if f in counts and len(shares[f]) == len(counts[f]) >= 2)
    if not features or min(sum(counts[f]) for f in features) <= 0:
        return None, len(features)
    ref = {f: _normalised(shares[f]) for f in features}
    return judge.input_drift({f: counts[f] for f in features}, ref, threshold, confidence, look_ahead), len(features)


def _by_feature(series: Mapping[tuple[str, ...], float]) -> dict[str, list[float]]:
    """{feature: values by bin index} from (feature, bin) series."""
    grouped: dict[str, dict[int, float]] = {}
    for (feature, b), v in series.items():
        if b.isdigit():
            grouped.setdefault(feature, {})[int(b)] = _nonneg(v)
    return {f: [bins.get(i, 0.0) for i in range(max(bins) + 1)] for f, bins in grouped.items()}


def _normalised(shares: list[float]) -> list[float]:
    total = sum(shares)
    return [s / total for s in shares] if total > 0 else shares


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
