"""The anytime-valid judge: canary against stable on the same window, with numpy and scipy only.

Owned here: the statistics behind the comparative checks of issue 13 (error-rate increase,
refusal-rate increase, prediction shift, input drift from a reference profile, p99 latency ratio)
and the `Decision` record each returns. Pure functions of counts; no I/O. Called by `compare`
(the operator's canary-against-stable checks) and by `bench/simulate_judge.py`, which proves the
error rates.

**The test.** Every count check asks about a difference of proportions d = p_canary - p_stable
(or a subset's share, for distributions) against a threshold. The evidence is a *universal
inference* e-value (Wasserman, Ramdas & Balakrishnan, PNAS 2020): a Bayes mixture of the two arms'
binomial likelihoods (a fixed mixture of Beta priors with means 1e-3 to 0.5, so that rare errors fit,
mirrored for class and bin shares, which may be near 1; both arms draw from the same component, so
the scale is paid for once) divided by the largest likelihood the null hypothesis allows.
For any point of the null the ratio is at most a nonnegative martingale with mean 1, so by Ville's
inequality it ever reaches 1/alpha with probability at most alpha, **however often one looks**
and whatever the traffic split (it may change between looks). Failed means the evidence against
"canary within the threshold" reached `confidence`; Passed means the evidence against "canary
beyond the threshold" reached it; otherwise Inconclusive. Each bound of the reported interval is
the corresponding one-sided (confidence) bound, so the verdict can be read off the interval:
Failed iff lower > threshold, Passed iff upper <= threshold.

Counts must be cumulative over one growing window (the canary's requests since it started, and the
stable's over the same span): that is the sequence the guarantee is about. Re-starting the window
at every step spends the error budget again at every step.

**Why this test.** The issue asks for an absolute margin (`maxErrorRateIncrease: 0.01`) and for
Passed as well as Failed. Netflix's sequential canary test (KDD 2022) conditions on the total
number of errors and tests the canary's *share* of them; it is the most powerful choice for "any
increase" and needs no nuisance parameter, but it cannot express an absolute margin (the null
"p_c <= p_s + margin" covers every share when p_s can be near 0) and it never passes a healthy
canary at margin 0. The universal-inference e-value handles any margin, both directions, exact
binomial likelihoods (no Poisson or normal approximation, so it is valid with 3 requests as with
3 million) and pays for that by estimating the stable rate too: at 0.1% -> 0.5% it needs about
twice the data of the conditional test (see bench/README.md). A confidence sequence from a
sequential-testing package would add a dependency for one closed form; scipy's `betaln` is enough.

**Distributions.** Total-variation distance TV = max over subsets A of p_c(A) - p_s(A) ("the share
of answers that changed kind"). Up to 6 classes or bins every subset is tested (Bonferroni over
them), so both bounds are the largest |difference| bounds over subsets. With more bins the lower
bound comes from single bins and, for ordered bins, every prefix "bin <= j" (how a shift of a
numeric feature shows); the upper bound is sum_k max(0, U_k) over each bin's upper bound. Input
drift is the one-sample version against the reference profile's fixed proportions (no stable arm
to estimate: cheaper), per feature, Bonferroni over features; the largest feature is reported with
every feature's figures.

**Latency.** The p99 of each arm is bracketed by histogram bucket edges from simultaneous
anytime-valid bounds on the tail share above each edge; the ratio's interval is [canary lower edge
/ stable upper edge, canary upper edge / stable lower edge]. What is anytime-valid: Failed (the
canary's p99 is above an edge that is more than `maxLatencyP99Ratio` times an edge stable's p99 is
below) and the interval. What is not: the point estimate (linear interpolation inside a bucket, as
PromQL's histogram_quantile) is descriptive; and since buckets are 2-2.5x apart no interval can be
narrower than one bucket, so a ratio threshold below that width could never pass. Passed therefore
also means "at bucket resolution, the canary's p99 is no higher than the top of stable's p99
bucket" (both p99 bracketed at the confidence): a slowdown smaller than one bucket goes unseen.

**More data.** While Inconclusive, `more_canary_requests` says how many more canary requests (with
stable growing in proportion, at the current estimates) a decision would need; None when the
estimate sits so close to the threshold that even 1000x the current data would not decide.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.special import betaln, logsumexp, xlog1py, xlogy

Verdict = Literal["Passed", "Failed", "Inconclusive"]
Array = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike


@dataclass(frozen=True)
class Prior:
    """An equal-weight mixture of Beta(a_j, b_j): the mixing distribution of the e-values."""

    a: Array
    b: Array

    @property
    def logw(self) -> Array:
        return np.asarray(np.log(np.full(self.a.size, 1 / self.a.size)), dtype=np.float64)


_MEANS = np.array([1e-3, 1e-2, 1e-1, 0.5])
_A = np.full(_MEANS.size, 0.5)
_B = _A * (1 - _MEANS) / _MEANS
# Rates (5xx, 422, latency tail shares) are small: Beta(0.5, b) with means 0.001, 0.01, 0.1, 0.5.
RATE_PRIOR = Prior(_A, _B)
# Shares of classes, bins and their subsets may sit anywhere in [0, 1]: the same, mirrored too.
SHARE_PRIOR = Prior(np.r_[_A, _B[:-1]], np.r_[_B, _A[:-1]])
_ITER = 40  # bisection steps for the boundary MLE: 2^-40 of the unit interval
MAX_SCALE = 1000.0  # `more_canary_requests` looks this far ahead


@dataclass(frozen=True)
class Decision:
    """One check's decision record: estimate, interval at `confidence`, both arms' n, verdict."""

    check: str
    estimate: float
    lower: float
    upper: float
    threshold: float
    confidence: float
    n_canary: float
    n_stable: float
    verdict: Verdict
    more_canary_requests: int | None = None
    per_feature: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)  # name: (est, lo, hi)

    def describe(self) -> str:
        """The sentence for status and Events."""
        head = (
            f"{self.check} {self.estimate:.4g} in [{self.lower:.4g}, {self.upper:.4g}] at {self.confidence:g} "
            f"vs threshold {self.threshold:g} (n canary {self.n_canary:.0f}, stable {self.n_stable:.0f}): "
            f"{self.verdict}"
        )
        if self.verdict == "Inconclusive":
            more = self.more_canary_requests
            head += f", need about {more} more canary requests" if more is not None else ", no decision in sight"
        return head


# ------------------------------------------------------------------------------------------------
# Likelihood pieces (vectorized: every argument broadcasts)
# ------------------------------------------------------------------------------------------------


def _f(x: ArrayLike) -> Array:
    return np.asarray(x, dtype=np.float64)


def log_mixture(k: ArrayLike, n: ArrayLike, prior: Prior = RATE_PRIOR) -> Array:
    """log of the Beta-mixture marginal likelihood of k successes in n Bernoulli trials (order fixed)."""
    kk, nn = _f(k)[..., None], _f(n)[..., None]
    terms = prior.logw + betaln(prior.a + kk, prior.b + nn - kk) - betaln(prior.a, prior.b)
    return np.asarray(logsumexp(terms, axis=-1), dtype=np.float64)


def log_mixture_pair(kc: ArrayLike, nc: ArrayLike, ks: ArrayLike, ns: ArrayLike, prior: Prior = RATE_PRIOR) -> Array:
    """log of the joint marginal of both arms under the shared-scale prior: one mixture component
    draws both rates from the same Beta (so the scale is paid for once, not once per arm)."""
    a, b, c, d = (_f(x)[..., None] for x in (kc, nc, ks, ns))
    one = betaln(prior.a + a, prior.b + b - a) + betaln(prior.a + c, prior.b + d - c)
    terms = prior.logw + one - 2 * betaln(prior.a, prior.b)
    return np.asarray(logsumexp(terms, axis=-1), dtype=np.float64)


def _loglik(k: Array, n: Array, p: Array) -> Array:
    return np.asarray(xlogy(k, p) + xlog1py(n - k, -p), dtype=np.float64)


def _mle(k: Array, n: Array) -> Array:
    return np.where(n > 0, k / np.maximum(n, 1e-300), 0.0)


def _boundary_loglik(kc: Array, nc: Array, ks: Array, ns: Array, d: Array) -> Array:
    """max over p_s of loglik(kc | p_s + d) + loglik(ks | p_s): concave, so bisection on the slope."""
    lo, hi = np.maximum(0.0, -d), np.minimum(1.0, 1.0 - d)
    a, b = lo.copy(), hi.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(_ITER):
            ps = 0.5 * (a + b)
            pc = ps + d
            slope = (
                np.where(kc > 0, kc / pc, 0.0)
                - np.where(nc > kc, (nc - kc) / (1 - pc), 0.0)
                + np.where(ks > 0, ks / ps, 0.0)
                - np.where(ns > ks, (ns - ks) / (1 - ps), 0.0)
            )
            up = np.nan_to_num(slope, nan=0.0) > 0
            a, b = np.where(up, ps, a), np.where(up, b, ps)
    ps = np.clip(0.5 * (a + b), lo, hi)
    return _loglik(kc, nc, np.clip(ps + d, 0.0, 1.0)) + _loglik(ks, ns, ps)


def log_evidence_two_sample(
    kc: ArrayLike, nc: ArrayLike, ks: ArrayLike, ns: ArrayLike, d: ArrayLike, side: Literal["above", "below"],
    prior: Prior = RATE_PRIOR,
) -> Array:  # fmt: skip
    """log e-value against H0: p_c - p_s <= d (side 'above': evidence the difference exceeds d)
    or H0: p_c - p_s >= d (side 'below'). Valid under continuous monitoring (see the docstring)."""
    kc_, nc_, ks_, ns_, d_ = np.broadcast_arrays(_f(kc), _f(nc), _f(ks), _f(ns), _f(d))
    dhat = _mle(kc_, nc_) - _mle(ks_, ns_)
    full = _loglik(kc_, nc_, _mle(kc_, nc_)) + _loglik(ks_, ns_, _mle(ks_, ns_))
    inside = dhat <= d_ if side == "above" else dhat >= d_
    den = np.where(inside, full, _boundary_loglik(kc_, nc_, ks_, ns_, d_))
    return log_mixture_pair(kc_, nc_, ks_, ns_, prior) - den


def log_evidence_one_sample(
    k: ArrayLike, n: ArrayLike, p: ArrayLike, side: Literal["above", "below"], prior: Prior = RATE_PRIOR
) -> Array:
    """log e-value against H0: proportion <= p ('above') or >= p ('below'): Robbins' mixture."""
    k_, n_, p_ = np.broadcast_arrays(_f(k), _f(n), _f(p))
    phat = _mle(k_, n_)
    nearest = np.minimum(phat, p_) if side == "above" else np.maximum(phat, p_)
    return log_mixture(k_, n_, prior) - _loglik(k_, n_, nearest)


def _invert(evidence: Callable[[Array], Array], lo: Array, hi: Array, thr: float, rising: bool) -> Array:
    """The boundary of {x : evidence(x) < thr} in [lo, hi], evidence monotone in x (bisection)."""
    a, b = lo.copy(), hi.copy()
    for _ in range(30):  # 2^-30 of the bound
        m = 0.5 * (a + b)
        rejected = evidence(m) >= thr
        # rising: rejected above the boundary; else rejected below it
        a, b = (np.where(rejected, a, m), np.where(rejected, m, b)) if rising else (
            np.where(rejected, m, a), np.where(rejected, b, m))  # fmt: skip
    return 0.5 * (a + b)


def diff_bounds(
    kc: ArrayLike, nc: ArrayLike, ks: ArrayLike, ns: ArrayLike, alpha: float, prior: Prior = RATE_PRIOR
) -> tuple[Array, Array]:
    """One-sided (1 - alpha) anytime-valid lower and upper bounds on p_c - p_s (vectorized)."""
    kc_, nc_, ks_, ns_ = np.broadcast_arrays(_f(kc), _f(nc), _f(ks), _f(ns))
    dhat = _mle(kc_, nc_) - _mle(ks_, ns_)
    thr = math.log(1 / alpha)
    lower = _invert(lambda x: log_evidence_two_sample(kc_, nc_, ks_, ns_, x, "above", prior),
                    np.full_like(dhat, -1.0), dhat.copy(), thr, rising=False)  # fmt: skip
    upper = _invert(lambda x: log_evidence_two_sample(kc_, nc_, ks_, ns_, x, "below", prior),
                    dhat.copy(), np.full_like(dhat, 1.0), thr, rising=True)  # fmt: skip
    return lower, upper


def prop_bounds(k: ArrayLike, n: ArrayLike, alpha: float, prior: Prior = RATE_PRIOR) -> tuple[Array, Array]:
    """One-sided (1 - alpha) anytime-valid lower and upper bounds on one proportion (vectorized)."""
    k_, n_ = np.broadcast_arrays(_f(k), _f(n))
    phat = _mle(k_, n_)
    thr = math.log(1 / alpha)
    lower = _invert(lambda x: log_evidence_one_sample(k_, n_, x, "above", prior), np.zeros_like(phat), phat.copy(), thr,
                    rising=False)  # fmt: skip
    upper = _invert(lambda x: log_evidence_one_sample(k_, n_, x, "below", prior), phat.copy(), np.ones_like(phat), thr,
                    rising=True)  # fmt: skip
    return lower, upper


# ------------------------------------------------------------------------------------------------
# Verdicts (vectorized, used by the simulation as by the records) and the look-ahead
# ------------------------------------------------------------------------------------------------

FAILED, INCONCLUSIVE, PASSED = 1, 0, -1
_NAMES: dict[int, Verdict] = {FAILED: "Failed", INCONCLUSIVE: "Inconclusive", PASSED: "Passed"}


def _alpha(confidence: float) -> float:
    if not 0.5 <= confidence < 1:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence!r}")
    return 1 - confidence


def rate_verdicts(
    kc: ArrayLike, nc: ArrayLike, ks: ArrayLike, ns: ArrayLike, max_increase: float, confidence: float
) -> npt.NDArray[np.int8]:
    """FAILED / PASSED / INCONCLUSIVE for p_c - p_s against `max_increase`, elementwise."""
    thr = math.log(1 / _alpha(confidence))
    fail = log_evidence_two_sample(kc, nc, ks, ns, max_increase, "above") >= thr
    ok = log_evidence_two_sample(kc, nc, ks, ns, max_increase, "below") >= thr
    return np.where(fail, FAILED, np.where(ok, PASSED, INCONCLUSIVE)).astype(np.int8)


def _tv_verdicts(
    share_evidence: Callable[[Array, float, Literal["above", "below"]], Array],
    share_upper: Callable[[Array, float], Array],
    k: int, ordered: bool, max_tv: float, alpha: float, passing: bool = True,
) -> npt.NDArray[np.int8]:  # fmt: skip
    """Failed when some subset's |share difference| exceeds max_tv; Passed when no subset's can
    (every subset, up to 6 bins) or the bins' positive upper bounds sum to at most max_tv (more
    bins). Bonferroni over the one-sided tests. `share_evidence(rows, d, side)`: log e-value per
    subset row (last axis); `share_upper(rows, a)`: upper bounds per row."""
    family = _subsets(k, ordered)
    thr = math.log(2 * len(family) / alpha)
    above, below = share_evidence(family, max_tv, "above"), share_evidence(family, -max_tv, "below")
    fail = np.any((above >= thr) | (below >= thr), axis=-1)
    if not passing:
        return np.where(fail, FAILED, INCONCLUSIVE).astype(np.int8)
    if k <= _ALL_SUBSETS:
        inner = (share_evidence(family, max_tv, "below") >= thr) & (share_evidence(family, -max_tv, "above") >= thr)
        ok = np.all(inner, axis=-1)
    else:
        ok = np.sum(np.maximum(share_upper(np.eye(k), alpha / k), 0.0), axis=-1) <= max_tv
    return np.where(fail, FAILED, np.where(ok, PASSED, INCONCLUSIVE)).astype(np.int8)


def _verdict(lower: float, upper: float, threshold: float) -> Verdict:
    """For checks judged from their interval (latency): Failed iff lower > threshold, Passed iff upper <= it."""
    if lower > threshold:
        return "Failed"
    if upper <= threshold:
        return "Passed"
    return "Inconclusive"


def _more_requests(n_canary: float, decided_at: Callable[[float], bool]) -> int | None:
    """Canary requests still needed if all counts grew by the same factor (estimates unchanged)."""
    if n_canary <= 0:
        return None
    lo, hi = 1.0, 2.0
    while not decided_at(hi):
        lo, hi = hi, hi * 2
        if hi > MAX_SCALE:
            return None
    for _ in range(5):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if decided_at(mid) else (mid, hi)
    return max(1, math.ceil(n_canary * (hi - 1)))


def rate_increase(
    check: str, events_canary: float, n_canary: float, events_stable: float, n_stable: float,
    max_increase: float, confidence: float = 0.95, look_ahead: bool = True,
) -> Decision:  # fmt: skip
    """Is the canary's share of events (5xx, 422) at most the stable's plus `max_increase`?"""
    alpha = _alpha(confidence)
    for name, k, n in (("canary", events_canary, n_canary), ("stable", events_stable, n_stable)):
        if not 0 <= k <= n:
            raise ValueError(f"{check}: {name} events {k!r} must be within [0, requests {n!r}]")
    counts = (events_canary, n_canary, events_stable, n_stable)

    def verdict_at(scale: float) -> int:
        kc, nc, ks, ns = (x * scale for x in counts)
        return int(rate_verdicts(kc, nc, ks, ns, max_increase, confidence))

    lo, hi = diff_bounds(*counts, alpha)
    verdict = verdict_at(1.0)
    more = _more_requests(n_canary, lambda s: verdict_at(s) != INCONCLUSIVE) if look_ahead and not verdict else None
    estimate = float(_mle(_f(events_canary), _f(n_canary)) - _mle(_f(events_stable), _f(n_stable)))
    return Decision(check, estimate, float(lo), float(hi), max_increase, confidence, n_canary, n_stable,
                    _NAMES[verdict], more)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Distributions: total-variation distance
# ------------------------------------------------------------------------------------------------


_ALL_SUBSETS = 6  # up to this many bins every subset is tested (2^(k-1) - 1 up to complement)


def _subsets(k: int, ordered: bool) -> Array:
    """Rows: indicator vectors of the subsets whose share differences bound TV. Up to 6 bins: every
    subset (TV is the largest of them, so both bounds are tight); more: single bins, and for ordered
    bins the prefixes "bin <= j" too (how a shifted numeric feature shows). A complement adds nothing."""
    if k <= _ALL_SUBSETS:
        masks = [m for m in range(1, 2**k - 1) if m & 1]  # bin 0 in A, A not everything
        return np.array([[(m >> i) & 1 for i in range(k)] for m in masks], dtype=np.float64)
    rows = [np.eye(k)[i] for i in range(k)]
    if ordered:
        rows += [np.r_[np.ones(j), np.zeros(k - j)] for j in range(2, k - 1)]
    return np.array(rows, dtype=np.float64)


def _tv_bounds(share_bounds: Callable[[Array, float], tuple[Array, Array]], k: int, ordered: bool,
               alpha: float) -> tuple[float, float]:  # fmt: skip
    """The interval matching `_tv_verdicts`: TV = max over subsets A of |p_c(A) - p_s(A)|."""
    family = _subsets(k, ordered)
    lo, hi = share_bounds(family, alpha / (2 * len(family)))
    lower = float(np.max(np.maximum(np.maximum(lo, -hi), 0.0)))
    if k <= _ALL_SUBSETS:
        upper = float(np.max(np.maximum(hi, -lo)))
    else:
        _, bin_hi = share_bounds(np.eye(k), alpha / k)
        upper = float(np.sum(np.maximum(bin_hi, 0.0)))
    return lower, min(1.0, max(upper, lower))


def _counts(name: str, values: Sequence[float] | Array) -> Array:
    arr = _f(values)
    if arr.ndim != 1 or arr.size < 2 or np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: need at least two finite, non-negative counts, got {arr.tolist()!r}")
    return arr


def shift_verdicts(
    canary: ArrayLike, stable: ArrayLike, max_shift: float, confidence: float, ordered: bool = False,
    passing: bool = True,
) -> npt.NDArray[np.int8]:  # fmt: skip
    """Verdicts for TV(canary, stable) <= max_shift; counts on the last axis, leading axes batch."""
    c, s = _f(canary), _f(stable)
    nc, ns = c.sum(-1, keepdims=True), s.sum(-1, keepdims=True)

    def evidence(rows: Array, d: float, side: Literal["above", "below"]) -> Array:
        return log_evidence_two_sample(c @ rows.T, nc, s @ rows.T, ns, d, side, SHARE_PRIOR)

    def upper(rows: Array, a: float) -> Array:
        return diff_bounds(c @ rows.T, nc, s @ rows.T, ns, a, SHARE_PRIOR)[1]

    return _tv_verdicts(evidence, upper, c.shape[-1], ordered, max_shift, _alpha(confidence), passing)


def prediction_shift(
    canary: Sequence[float], stable: Sequence[float], max_shift: float, confidence: float = 0.95,
    ordered: bool = False, look_ahead: bool = True,
) -> Decision:  # fmt: skip
    """TV distance between the canary's and stable's prediction counts (per class or per bin)."""
    alpha = _alpha(confidence)
    c, s = _counts("canary predictions", canary), _counts("stable predictions", stable)
    if c.size != s.size:
        raise ValueError(f"prediction counts: canary has {c.size} classes/bins, stable {s.size}")
    nc, ns = float(c.sum()), float(s.sum())

    def share_bounds(rows: Array, a: float) -> tuple[Array, Array]:
        return diff_bounds(rows @ c, nc, rows @ s, ns, a, SHARE_PRIOR)

    lower, upper = _tv_bounds(share_bounds, c.size, ordered, alpha)
    verdict = int(shift_verdicts(c, s, max_shift, confidence, ordered))
    more = None
    if look_ahead and not verdict:
        more = _more_requests(nc, lambda x: int(shift_verdicts(c * x, s * x, max_shift, confidence, ordered)) != 0)
    est = 0.5 * float(np.abs(_mle(c, _f(nc)) - _mle(s, _f(ns))).sum()) if nc > 0 and ns > 0 else 0.0
    return Decision("prediction-shift", est, lower, upper, max_shift, confidence, nc, ns, _NAMES[verdict], more)


def drift_verdicts(
    canary: ArrayLike, reference: ArrayLike, max_drift: float, confidence: float, passing: bool = True
) -> npt.NDArray[np.int8]:
    """Verdicts for max over features of TV(canary bins, reference proportions) <= max_drift.

    `canary`: counts shaped (..., features, bins); `reference`: proportions (features, bins).
    Failed when any feature fails at alpha / features; Passed when every feature passes at it."""
    c, q = _f(canary), _f(reference)
    n = c.sum(-1, keepdims=True)
    a = _alpha(confidence) / q.shape[0]

    def evidence(rows: Array, d: float, side: Literal["above", "below"]) -> Array:
        # a bound outside [0, 1] leaves the null everything: clipped, the e-value stays <= 1
        return log_evidence_one_sample(c @ rows.T, n, np.clip(q @ rows.T + d, 0.0, 1.0), side, SHARE_PRIOR)

    def upper(rows: Array, a_: float) -> Array:
        return prop_bounds(c @ rows.T, n, a_, SHARE_PRIOR)[1] - q @ rows.T

    per = _tv_verdicts(evidence, upper, q.shape[-1], True, max_drift, a, passing)
    fail = np.any(per == FAILED, axis=-1)
    ok = np.all(per == PASSED, axis=-1)
    return np.where(fail, FAILED, np.where(ok, PASSED, INCONCLUSIVE)).astype(np.int8)


def input_drift(
    canary: Mapping[str, Sequence[float]], reference: Mapping[str, Sequence[float]], max_drift: float,
    confidence: float = 0.95, look_ahead: bool = True,
) -> Decision:  # fmt: skip
    """Largest per-feature TV distance of the canary's binned inputs from the reference proportions.

    Bins are ordered (a numeric feature's bins from the reference profile), so prefixes count.
    Features may have different numbers of bins; each is judged at alpha / features."""
    alpha = _alpha(confidence)
    missing = sorted(set(reference) - set(canary))
    if not reference or missing:
        raise ValueError(f"input drift: no canary bin counts for feature(s) {missing or '(none given)'}")
    data: dict[str, tuple[Array, Array]] = {}
    for name in sorted(reference):
        c = _counts(f"feature {name!r} counts", canary[name])
        q = _counts(f"feature {name!r} reference", reference[name])
        if c.size != q.size or not math.isclose(float(q.sum()), 1.0, abs_tol=1e-6):
            raise ValueError(f"feature {name!r}: {c.size} bins against {q.size} reference proportions summing to 1")
        data[name] = (c, q)
    a_feat = alpha / len(data)
    conf_feat = 1 - a_feat

    def verdict_at(scale: float) -> int:
        per = [int(drift_verdicts((c * scale)[None], q[None], max_drift, conf_feat)) for c, q in data.values()]
        return FAILED if FAILED in per else PASSED if all(v == PASSED for v in per) else INCONCLUSIVE

    pf: dict[str, tuple[float, float, float]] = {}
    for name, (c, q) in data.items():
        n = float(c.sum())

        def share_bounds(rows: Array, a: float, c: Array = c, q: Array = q, n: float = n) -> tuple[Array, Array]:
            lo, hi = prop_bounds(rows @ c, n, a, SHARE_PRIOR)
            return lo - rows @ q, hi - rows @ q

        lo, hi = _tv_bounds(share_bounds, c.size, True, a_feat)
        pf[name] = (0.5 * float(np.abs(c / max(n, 1e-300) - q).sum()) if n > 0 else 0.0, lo, hi)
    verdict = verdict_at(1.0)
    n_min = min(float(c.sum()) for c, _ in data.values())
    more = _more_requests(n_min, lambda x: verdict_at(x) != INCONCLUSIVE) if look_ahead and not verdict else None
    est, lower, upper = (max(v[i] for v in pf.values()) for i in range(3))
    return Decision("input-drift", est, lower, upper, max_drift, confidence, n_min, 0.0, _NAMES[verdict], more, pf)


# ------------------------------------------------------------------------------------------------
# Latency: p99 ratio from histogram buckets
# ------------------------------------------------------------------------------------------------


def _quantile(edges: Array, cum: Array, q: float) -> float:
    """histogram_quantile's linear interpolation inside the bucket (descriptive)."""
    total = cum[-1]
    if total <= 0:
        return math.nan
    rank = q * total
    i = int(np.searchsorted(cum, rank, side="left"))
    if i >= edges.size:  # in the +Inf bucket: PromQL answers the largest finite edge
        return float(edges[-1])
    lo_edge, lo_cum = (0.0, 0.0) if i == 0 else (float(edges[i - 1]), float(cum[i - 1]))
    width = float(cum[i]) - lo_cum
    return lo_edge + (float(edges[i]) - lo_edge) * ((rank - lo_cum) / width if width > 0 else 1.0)


def _quantile_bounds(edges: Array, cum: Array, q: float, alpha: float) -> tuple[float, float]:
    """Bucket edges bracketing the q-quantile, from simultaneous bounds on the tail share 1 - F(edge)
    at every edge (Bonferroni; tail shares are small, where the mixing prior has its mass)."""
    n = float(cum[-1])
    lo_t, hi_t = prop_bounds(n - cum[: edges.size], n, alpha / (2 * edges.size))
    below = edges[lo_t > 1 - q]  # more than 1 - q above the edge for sure: the quantile is above it
    lower = float(below.max()) if below.size else 0.0
    above = edges[hi_t <= 1 - q]  # at most 1 - q above the edge for sure: the quantile is at most it
    upper = float(above.min()) if above.size else math.inf
    return lower, upper


def latency_ratio(
    edges: Sequence[float], canary_cumulative: Sequence[float], stable_cumulative: Sequence[float],
    max_ratio: float, confidence: float = 0.95, quantile: float = 0.99,
) -> Decision:  # fmt: skip
    """Canary p99 over stable p99 from cumulative bucket counts (finite `le` edges, then +Inf)."""
    alpha = _alpha(confidence)
    e = _f(edges)
    c, s = _f(canary_cumulative), _f(stable_cumulative)
    if e.ndim != 1 or e.size < 1 or np.any(np.diff(e) <= 0) or e[0] <= 0:
        raise ValueError(f"latency buckets: edges must be positive and increasing, got {list(edges)!r}")
    for name, arr in (("canary", c), ("stable", s)):
        if arr.size != e.size + 1 or np.any(np.diff(arr) < 0) or arr[0] < 0:
            raise ValueError(f"latency buckets: {name} needs {e.size + 1} cumulative counts (last is +Inf)")

    def judged(scale: float) -> tuple[float, float, Verdict]:
        c_lo, c_hi = _quantile_bounds(e, c * scale, quantile, alpha / 2)
        s_lo, s_hi = _quantile_bounds(e, s * scale, quantile, alpha / 2)
        lower = c_lo / s_hi if s_hi > 0 else 0.0
        upper = c_hi / s_lo if s_lo > 0 else math.inf
        verdict = _verdict(lower, upper, max_ratio)
        if verdict == "Inconclusive" and math.isfinite(s_hi) and c_hi <= s_hi:
            verdict = "Passed"  # at bucket resolution: the canary's p99 is no higher than the top of stable's bucket
        return lower, upper, verdict

    lower, upper, verdict = judged(1.0)
    more = None
    if verdict == "Inconclusive":
        more = _more_requests(float(c[-1]), lambda x: judged(x)[2] != "Inconclusive")
    est_c, est_s = _quantile(e, c, quantile), _quantile(e, s, quantile)
    estimate = est_c / est_s if est_s > 0 else math.nan
    return Decision("latency-p99-ratio", estimate, lower, upper, max_ratio, confidence, float(c[-1]), float(s[-1]),
                    verdict, more)  # fmt: skip
