"""The anytime-valid judge: error rates under repeated looks, known cases, records and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from modeldeploy_operator import judge
from modeldeploy_operator.judge import FAILED, PASSED, rate_verdicts

RUNS, LOOKS = 400, 150


def _looks(rng: np.random.Generator, p_canary: float, p_stable: float) -> tuple[np.ndarray, ...]:
    """Cumulative counts at LOOKS looks of RUNS rollouts: 20 canary and 80 stable requests per look."""
    nc = rng.poisson(20, (RUNS, LOOKS))
    ns = rng.poisson(80, (RUNS, LOOKS))
    kc, ks = rng.binomial(nc, p_canary), rng.binomial(ns, p_stable)
    return kc.cumsum(1), nc.cumsum(1), ks.cumsum(1), ns.cumsum(1)


def test_false_failures_stay_below_alpha_however_often_one_looks() -> None:
    """A canary exactly at the threshold (the hardest healthy case), judged at each of 150 looks:
    the share of rollouts ever Failed stays below 1 - confidence, where a fixed-n z-test re-run at
    every look (the naive way) fails far more often than its nominal 5%."""
    rng = np.random.default_rng(7)
    kc, nc, ks, ns = _looks(rng, 0.15, 0.10)
    ever_failed = np.mean((rate_verdicts(kc, nc, ks, ns, 0.05, 0.95) == FAILED).any(1))
    assert ever_failed <= 0.05
    pc, ps = kc / nc, ks / ns
    z = (pc - ps - 0.05) / np.sqrt(pc * (1 - pc) / nc + ps * (1 - ps) / ns)
    naive = np.mean((z > norm.ppf(0.95)).any(1))
    assert naive > 0.15  # the trap the judge avoids: looking often inflates a fixed-n test's error


def test_false_passes_stay_below_alpha_however_often_one_looks() -> None:
    rng = np.random.default_rng(8)
    kc, nc, ks, ns = _looks(rng, 0.15, 0.10)
    assert np.mean((rate_verdicts(kc, nc, ks, ns, 0.05, 0.95) == PASSED).any(1)) <= 0.05


def test_a_clear_regression_is_failed_and_a_healthy_canary_passed_within_the_looks() -> None:
    rng = np.random.default_rng(9)
    bad = rate_verdicts(*_looks(rng, 0.30, 0.10), 0.05, 0.95)
    good = rate_verdicts(*_looks(rng, 0.10, 0.10), 0.05, 0.95)
    assert np.mean((bad == FAILED).any(1)) > 0.99 and not (bad == PASSED).any()
    assert np.mean((good == PASSED).any(1)) > 0.99 and not (good == FAILED).any()


def test_total_failure_is_failed_within_three_canary_requests() -> None:
    d = judge.rate_increase("error-rate", 3, 3, 10, 10_000, 0.01)
    assert d.verdict == "Failed" and d.lower > 0.01 and d.estimate == pytest.approx(0.999)
    assert judge.rate_increase("error-rate", 1, 1, 10, 10_000, 0.01).verdict == "Inconclusive"


def test_record_has_interval_both_ns_and_a_look_ahead_that_decides() -> None:
    d = judge.rate_increase("error-rate", 4, 800, 6, 7200, 0.01)
    assert d.verdict == "Inconclusive" and d.n_canary == 800 and d.n_stable == 7200
    assert d.lower < d.estimate < d.upper and d.lower <= 0.01 < d.upper
    assert d.more_canary_requests is not None and d.more_canary_requests > 0
    scale = (800 + d.more_canary_requests) / 800
    assert judge.rate_increase("error-rate", 4 * scale, 800 * scale, 6 * scale, 7200 * scale, 0.01).verdict == "Passed"
    assert "need about" in d.describe() and "n canary 800, stable 7200" in d.describe()


@pytest.mark.parametrize(("kc", "nc", "ks", "ns"), [(30, 100, 10, 400), (0, 900, 3, 8100), (2, 50, 1, 450)])
def test_verdict_reads_off_the_interval(kc: int, nc: int, ks: int, ns: int) -> None:
    d = judge.rate_increase("refusal-rate", kc, nc, ks, ns, 0.02, look_ahead=False)
    expected = "Failed" if d.lower > 0.02 else "Passed" if d.upper <= 0.02 else "Inconclusive"
    assert d.verdict == expected


def test_bounds_cover_the_truth_at_every_look() -> None:
    rng = np.random.default_rng(10)
    kc, nc, ks, ns = (x[:100, ::15] for x in _looks(rng, 0.02, 0.01))
    lo, hi = judge.diff_bounds(kc, nc, ks, ns, 0.05)
    assert np.mean((lo > 0.01).any(1)) <= 0.05 and np.mean((hi < 0.01).any(1)) <= 0.05


def test_a_canary_predicting_one_class_for_everything_is_failed_on_prediction_shift() -> None:
    d = judge.prediction_shift([300, 0, 0], [120, 100, 80], 0.1)
    assert d.verdict == "Failed" and d.estimate == pytest.approx(0.6) and d.lower > 0.1
    assert (d.n_canary, d.n_stable) == (300, 300)


def test_the_same_prediction_mix_passes_with_enough_data_and_not_without() -> None:
    assert judge.prediction_shift([5000, 3000, 2000], [5000, 3000, 2000], 0.05).verdict == "Passed"
    small = judge.prediction_shift([50, 30, 20], [50, 30, 20], 0.05)
    assert small.verdict == "Inconclusive" and small.more_canary_requests is not None


def test_input_drift_names_the_drifted_feature() -> None:
    edges = norm.ppf(np.linspace(0, 1, 11))
    ref = np.full(10, 0.1)
    shifted = np.diff(norm.cdf(edges - 1.0)) * 2000
    d = judge.input_drift({"depth": ref * 2000, "porosity": shifted}, {"depth": ref, "porosity": ref}, 0.1)
    assert d.verdict == "Failed"
    assert d.per_feature["porosity"][1] > 0.1 and d.per_feature["depth"][1] == 0.0
    assert d.estimate == pytest.approx(d.per_feature["porosity"][0])


def test_latency_ratio_fails_a_slow_canary_and_passes_an_equal_one() -> None:
    edges = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
    stable = [0, 4000, 9000, 9990, 10000, 10000, 10000, 10000, 10000]
    slow = [0, 0, 0, 100, 1000, 5000, 9000, 9995, 10000]
    d = judge.latency_ratio(edges, slow, stable, 1.5)
    assert d.verdict == "Failed" and d.lower > 1.5 and d.estimate > 10
    assert judge.latency_ratio(edges, stable, stable, 1.5).verdict == "Passed"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: judge.rate_increase("error-rate", 5, 3, 0, 10, 0.01), "canary events 5"),
        (lambda: judge.rate_increase("error-rate", 0, 3, 0, 10, 0.01, confidence=1.0), "confidence must be"),
        (lambda: judge.prediction_shift([1, 2], [1, 2, 3], 0.1), "canary has 2 classes/bins, stable 3"),
        (lambda: judge.input_drift({}, {"x": [0.5, 0.5]}, 0.1), "feature(s) ['x']"),
        (lambda: judge.input_drift({"x": [1, 1]}, {"x": [0.5, 0.6]}, 0.1), "feature 'x'"),
        (lambda: judge.latency_ratio([0.1, 0.05], [0, 0, 0], [0, 0, 0], 1.5), "increasing"),
    ],
)
def test_bad_input_is_refused_with_a_reason(call: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        call()  # type: ignore[operator]


def test_no_data_is_inconclusive_with_no_look_ahead() -> None:
    d = judge.rate_increase("error-rate", 0, 0, 0, 0, 0.01)
    assert d.verdict == "Inconclusive" and d.more_canary_requests is None and math.isfinite(d.upper)
