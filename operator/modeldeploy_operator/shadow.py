"""The shadow step's check: the canary's answers against stable's on mirrored requests. Pure.

During a `shadow` step the stable pods forward a sampled share of what they answered (request id,
input rows, their answer) to the canary, which computes its own answer and counts, per pair of
revisions (`revision` = canary, `stable_revision` = stable): pairs, agreements, the sum of the
per-pair mean absolute differences (each value's difference capped at `diff_cap`) and its own
failures on mirrored requests;
stable counts what it mirrored and what it dropped (server `shadow` module). The counters start at 0
with the canary's pods, which serve no user during the step, so their current sums are the
cumulative counts since the canary started: the sequence the anytime-valid bounds are about.

`minAgreement`: the disagreement share (1 - agreement; a canary error or refusal on a mirrored
request is a disagreement) gets `judge.prop_bounds` (one-sided, anytime-valid at `confidence`);
Failed iff the agreement's upper bound is below the threshold, Passed iff its lower bound is at
least the threshold. `maxMeanAbsDiff` (in the answers' own unit: probabilities, or a regressor's
values in any unit): each value's difference is capped at C = 10 x the threshold (`diff_cap`, sent to
the servers with the step), so the per-pair values divided by C lie in [0, 1] and get the same bounds
(the Beta-mixture e-value stays a supermartingale for any [0, 1]-valued observation: x -> a^x b^(1-x)
is convex, so E[...] <= mu a + (1 - mu) b = 1), scaled back by C; Failed iff lower > threshold,
Passed iff upper <= threshold. A bound needs bounded observations: what Passed certifies is the mean
of the capped differences, so a canary can pass only if fewer than 10% of its rows are off by more
than 10 x the threshold. Passed also needs `minRequests` pairs, like every other check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from modeldeploy_operator import judge
from modeldeploy_operator.api import AnalysisSpec, CheckRecord

if TYPE_CHECKING:
    from modeldeploy_operator.analysis import QueryResult

# Server metric names (a contract with modeldeploy_server.shadow, pinned by the tests).
PAIRS_METRIC = "modeldeploy_shadow_pairs_total"
AGREEMENTS_METRIC = "modeldeploy_shadow_agreements_total"
ABS_DIFF_METRIC = "modeldeploy_shadow_abs_diff_total"
FAILURES_METRIC = "modeldeploy_shadow_canary_failures_total"
MIRRORED_METRIC = "modeldeploy_shadow_mirrored_total"
AGREEMENT = "shadow-agreement"
MEAN_ABS_DIFF = "shadow-mean-abs-diff"
PAIRS, AGREEMENTS, ABS_DIFF, FAILURES, SENT, DROPPED = (
    f"shadow:{k}" for k in ("pairs", "agreements", "abs-diff", "canary-failures", "sent", "dropped")
)


def queries(namespace: str, model: str, canary: str, stable: str) -> dict[str, str]:
    """Current sums over the canary's pods (paired counts) and stable's pods (mirrored counts)."""
    pair = f'namespace="{namespace}",model="{model}",revision="{canary}",stable_revision="{stable}"'
    sent = f'namespace="{namespace}",model="{model}",revision="{stable}",canary_revision="{canary}"'
    return {
        PAIRS: f"sum({PAIRS_METRIC}{{{pair}}})",
        AGREEMENTS: f"sum({AGREEMENTS_METRIC}{{{pair}}})",
        ABS_DIFF: f"sum({ABS_DIFF_METRIC}{{{pair}}})",
        FAILURES: f"sum({FAILURES_METRIC}{{{pair}}})",
        SENT: f'sum({MIRRORED_METRIC}{{{sent},result="sent"}})',
        DROPPED: f'sum({MIRRORED_METRIC}{{{sent},result!="sent"}})',
    }


def _count(res: QueryResult | None) -> float:
    return 0.0 if res is None or res.value is None or math.isnan(res.value) else max(0.0, float(res.value))


DIFF_CAP_MULTIPLE = 10.0


def diff_cap(max_mean_abs_diff: float | None) -> float:
    """What the servers cap each value's absolute difference at: 10 x maxMeanAbsDiff; 1 without it."""
    return 1.0 if max_mean_abs_diff is None else DIFF_CAP_MULTIPLE * max_mean_abs_diff


def _bounds(k: float, n: float, confidence: float) -> tuple[float, float]:
    lo, hi = judge.prop_bounds(k, n, 1 - confidence)
    return float(lo), float(hi)


def _verdict(passed: bool, failed: bool, enough: bool) -> judge.Verdict:
    if failed:
        return "Failed"
    return "Passed" if passed and enough else "Inconclusive"


def evaluate(spec: AnalysisSpec, promql: Mapping[str, str], results: Mapping[str, QueryResult]) -> list[CheckRecord]:
    """One record per configured shadow check; Error when one of its queries failed."""
    failed = [r.error for k in (PAIRS, AGREEMENTS, ABS_DIFF) if (r := results.get(k)) is not None and r.error]
    missing = [k for k in (PAIRS, AGREEMENTS, ABS_DIFF) if k not in results]
    n, agree, diff = (_count(results.get(k)) for k in (PAIRS, AGREEMENTS, ABS_DIFF))
    cap = diff_cap(spec.max_mean_abs_diff)
    agree, diff = min(agree, n), min(diff, n * cap)
    sent, dropped, failures = (_count(results.get(k)) for k in (SENT, DROPPED, FAILURES))
    least = max(1, spec.min_requests)
    enough = n >= least
    tail = (
        f" (n={n:.0f} pairs, {failures:.0f} canary errors/refusals among them; stable mirrored {sent:.0f}, "
        f"dropped {dropped:.0f})"
    )
    wanted = [
        (AGREEMENT, spec.min_agreement, promql.get(AGREEMENTS, "")),
        (MEAN_ABS_DIFF, spec.max_mean_abs_diff, promql.get(ABS_DIFF, "")),
    ]
    records: list[CheckRecord] = []
    for name, threshold, query in wanted:
        if threshold is None:
            continue
        query = f"{query} / {promql.get(PAIRS, '')}"
        if failed or missing:
            text = f"Prometheus query failed: {failed[0] if failed else 'not run'}"
            records.append(CheckRecord(name=name, query=query, verdict="Error", message=text))
            continue
        limit = f">= {threshold:g}" if name == AGREEMENT else f"<= {threshold:g}"
        if n <= 0:
            text = f"{name}: no mirrored request paired yet{tail}"
            records.append(CheckRecord(name=name, query=query, samples=0, threshold=limit, verdict="Inconclusive",
                                       message=text))  # fmt: skip
            continue
        if name == AGREEMENT:
            d_lo, d_hi = _bounds(n - agree, n, spec.confidence)  # the disagreement share
            value, lower, upper = agree / n, 1 - d_hi, 1 - d_lo
            verdict = _verdict(lower >= threshold, upper < threshold, enough)
            what = "share of mirrored requests the canary answered as stable did"
        else:
            value, (lower, upper) = diff / n, _bounds(diff / cap, n, spec.confidence)
            lower, upper = lower * cap, upper * cap
            verdict = _verdict(upper <= threshold, lower > threshold, enough)
            what = f"mean absolute difference of the canary's answers from stable's (each capped at {cap:g})"
        text = (
            f"{name} {value:.4g} in [{lower:.4g}, {upper:.4g}] at {spec.confidence:g} vs threshold {limit}: "
            f"{verdict}, {what}{tail}"
        )
        if verdict == "Inconclusive" and not enough and lower >= 0:
            text += f"; Passed needs minRequests {least} pairs"
        records.append(
            CheckRecord(
                name=name, query=query, samples=n, value=value, lower=lower, upper=upper, threshold=limit,
                verdict=verdict, message=text,
            )
        )  # fmt: skip
    return records
