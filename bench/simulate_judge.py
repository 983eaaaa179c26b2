"""Simulated rollouts over the real judge: its error rates and its speed, seeded and pure.

Owned here: the simulation behind the judge table in bench/README.md (issue 13, item 5). Every
scenario draws thousands of rollouts with Poisson request arrivals split by the canary weight,
binomial errors per arm, multinomial predictions and binned inputs, feeds the cumulative counts at
every look to the vectorized verdict functions of `modeldeploy_operator.judge` (the same ones the
decision records use) and counts what happened. No I/O except printing and, with --write, the
table between the judge markers of bench/README.md. Run by hand: `python bench/simulate_judge.py`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import norm

from modeldeploy_operator.judge import FAILED, PASSED, drift_verdicts, rate_verdicts, shift_verdicts

README = Path(__file__).with_name("README.md")
BEGIN, END = "<!-- judge:begin -->", "<!-- judge:end -->"


def arrivals(rng: np.random.Generator, runs: int, looks: int, rate: float, weight: float, every: float,
             p_canary: float, p_stable: float) -> tuple[np.ndarray, ...]:  # fmt: skip
    """Cumulative (canary events, canary n, stable events, stable n) at each look: shape (runs, looks)."""
    nc = rng.poisson(rate * weight * every, (runs, looks))
    ns = rng.poisson(rate * (1 - weight) * every, (runs, looks))
    kc, ks = rng.binomial(nc, p_canary), rng.binomial(ns, p_stable)
    return kc.cumsum(1), nc.cumsum(1), ks.cumsum(1), ns.cumsum(1)


def first_time(verdicts: np.ndarray, which: int, every: float) -> np.ndarray:
    """Seconds to the first look with `which` per run; inf when never."""
    hit = verdicts == which
    return np.where(hit.any(1), (hit.argmax(1) + 1) * every, np.inf)


def _quantile(t: np.ndarray, q: float) -> str:
    """A quantile of times where inf means never (sorted, so inf stays inf instead of nan)."""
    m = float(np.sort(t)[min(len(t) - 1, int(q * len(t)))])
    return "never" if m == np.inf else f"{m:.0f}"


def false_rollbacks(rng: np.random.Generator, runs: int) -> list[str]:
    rows = ["| canary vs stable 5xx | threshold | req/s, weight | checked | false rollbacks | bound |",
            "|---|---:|---|---|---:|---:|"]  # fmt: skip
    every, hours = 5.0, 1.0
    looks = int(hours * 3600 / every)
    for pc, ps, delta in ((0.001, 0.001, 0.002), (0.003, 0.001, 0.002), (0.02, 0.01, 0.01), (0.01, 0.01, 0.0001)):
        kc, nc, ks, ns = arrivals(rng, runs, looks, 100, 0.1, every, pc, ps)
        v = rate_verdicts(kc, nc, ks, ns, delta, 0.95)
        share = float(np.mean((v == FAILED).any(1)))
        label = "at the threshold" if abs(pc - ps - delta) < 1e-12 else "identical" if pc == ps else "within"
        rows.append(f"| {100 * pc:g}% vs {100 * ps:g}% ({label}) | {delta:g} | 100, 10% | every {every:g} s for "
                    f"{hours:g} h | {100 * share:.2f}% of {runs} | 5% |")  # fmt: skip
    return rows


def time_to_rollback(rng: np.random.Generator, runs: int) -> list[str]:
    rows = ["| stable → canary 5xx | threshold | req/s | weight | rolled back within 30 min | median s | p90 s |",
            "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    every, looks = 5.0, 360
    cases = [(0.001, 0.005, d, 100, 0.1) for d in (0.0001, 0.001, 0.002)]
    cases += [(0.001, 0.005, 0.001, r, w) for r, w in ((100, 0.05), (100, 0.5), (10, 0.1), (1000, 0.1))]
    cases += [(0.001, pc, 0.001, 100, 0.1) for pc in (0.01, 0.05, 1.0)]
    for ps, pc, delta, rate, w in cases:
        v = rate_verdicts(*arrivals(rng, runs, looks, rate, w, every, pc, ps), delta, 0.95)
        t = first_time(v, FAILED, every)
        rows.append(f"| {100 * ps:g}% → {100 * pc:g}% | {delta:g} | {rate} | {100 * w:g}% | "
                    f"{100 * np.mean(np.isfinite(t)):.1f}% | {_quantile(t, 0.5)} | {_quantile(t, 0.9)} |")  # fmt: skip
    return rows


def time_to_pass(rng: np.random.Generator, runs: int) -> list[str]:
    rows = ["| canary = stable 5xx | threshold | req/s, weight | passed within 30 min | median s |",
            "|---|---:|---|---:|---:|"]  # fmt: skip
    every, looks = 5.0, 360
    for p, delta in ((0.001, 0.01), (0.001, 0.005), (0.01, 0.01)):
        v = rate_verdicts(*arrivals(rng, runs, looks, 100, 0.1, every, p, p), delta, 0.95)
        t = first_time(v, PASSED, every)
        passed = 100 * np.mean(np.isfinite(t))
        rows.append(f"| {100 * p:g}% | {delta:g} | 100, 10% | {passed:.1f}% | {_quantile(t, 0.5)} |")
    return rows


def total_failure() -> list[str]:
    """Canary requests (all 5xx) needed in one look to fail, against a healthy stable arm."""
    rows = ["| stable 5xx, stable n | threshold | canary requests (all 5xx) to Failed |", "|---|---:|---:|"]
    for ps, ns in ((0.001, 100), (0.001, 10_000), (0.01, 10_000)):
        for delta in (0.01, 0.1):
            n = np.arange(1, 21, dtype=float)
            v = rate_verdicts(n, n, ps * ns, ns, delta, 0.95)
            first = int(n[np.argmax(v == FAILED)]) if (v == FAILED).any() else None
            rows.append(f"| {100 * ps:g}%, {ns} | {delta:g} | {first} |")
    return rows


def _multinomial_looks(rng: np.random.Generator, runs: int, probs: np.ndarray, step: int, looks: int) -> np.ndarray:
    """Cumulative counts (runs, looks, bins) for `step` draws per look."""
    return rng.multinomial(step, probs, size=(runs, looks)).cumsum(1).astype(float)


def _power_row(fired_bad: np.ndarray, fired_ok: np.ndarray, step: int) -> str:
    """Power by n = 500 per arm, n at which 90% of runs have failed, false alarms by the end."""
    power500 = float(np.mean(fired_bad[:, : 500 // step].any(1)))
    first = first_time(fired_bad, True, step)
    return f"{100 * power500:.1f}% | {_quantile(first, 0.9)} | {100 * np.mean(fired_ok.any(1)):.2f}% |"


def shifts(rng: np.random.Generator, runs: int) -> list[str]:
    rows = ["| check | stable → canary | threshold, confidence | power by n = 500 per arm | n per arm for 90% | "
            "false alarms by n = 4,000 |", "|---|---|---|---:|---:|---:|"]  # fmt: skip
    step, looks, conf, thr = 50, 80, 0.99, 0.02
    mixes = [
        ("3 classes", [0.5, 0.3, 0.2], [0.4, 0.3, 0.3]),
        ("3 classes, rare one grows", [0.9, 0.05, 0.05], [0.8, 0.05, 0.15]),
        ("2 classes", [0.5, 0.5], [0.4, 0.6]),
    ]
    for label, stable, canary in mixes:
        s0 = _multinomial_looks(rng, runs, np.array(stable), step, looks)
        fired = [shift_verdicts(_multinomial_looks(rng, runs, np.array(p), step, looks), s0, thr, conf, passing=False)
                 == FAILED for p in (canary, stable)]  # fmt: skip
        rows.append(f"| prediction shift ({label}) | {stable} → {canary} (TV 0.1) | {thr}, {conf} | "
                    + _power_row(fired[0], fired[1], step))  # fmt: skip
    features, bins = 4, 10
    edges = norm.ppf(np.linspace(0, 1, bins + 1))
    ref = np.full((features, bins), 1 / bins)
    for shift in (0.25, 0.5):
        shifted = np.diff(norm.cdf(edges - shift))
        fired = []
        for first in (shifted, ref[0]):
            probs = np.vstack([first, ref[1:]])
            c = np.stack([_multinomial_looks(rng, runs, p, step, looks) for p in probs], axis=2)
            fired.append(drift_verdicts(c, ref, thr, conf, passing=False) == FAILED)
        tv = 0.5 * float(np.abs(shifted - ref[0]).sum())
        rows.append(f"| input drift, 1 of {features} features, {bins} decile bins | {shift}σ shift (TV of bins "
                    f"{tv:.3f}) | {thr}, {conf} | " + _power_row(fired[0], fired[1], step))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000, help="simulated rollouts per scenario")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--write", action="store_true", help="replace the judge table in bench/README.md")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    start = time.monotonic()
    parts = [
        ("False rollbacks of a healthy canary, checked continuously", false_rollbacks(rng, args.runs)),
        ("Time to rollback (Poisson arrivals, looks every 5 s)", time_to_rollback(rng, args.runs // 4)),
        ("Time to Passed for a healthy canary", time_to_pass(rng, args.runs // 4)),
        ("Total failure", total_failure()),
        ("Distribution checks (looks every 50 requests per arm)", shifts(rng, args.runs // 2)),
    ]
    took = time.monotonic() - start
    out = [f"`python bench/simulate_judge.py --runs {args.runs} --seed {args.seed}` ({took:.0f} s)."]
    for title, rows in parts:
        out += ["", f"**{title}**", "", *rows]
    text = "\n".join(out)
    print(text)
    if args.write:
        readme = README.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        README.write_text(pattern.sub(lambda _: block, readme) if BEGIN in readme else readme + "\n" + block + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
