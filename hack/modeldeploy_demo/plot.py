"""A picture of each rollout of `make demo`: what the operator saw and decided, over time.

- `rollout_record(...)`: one rollout as a plain, JSON-able dict, from what the demo recorded while it
  ran (`kube.Watch`'s route weights and statuses, each status's `lastAnalysis` decision record,
  the Events) and both arms' counts at each analysis (`counts`, the demo asks Prometheus).
- `series(record)`: the data each panel plots (pure; what the unit test checks).
- `draw(record, path)`: one PNG (matplotlib, Agg backend: no display needed) with four panels over
  the seconds since the spec change:
  1. the canary's weight in the HTTPRoute, the shadow step shaded, every analysis marked with its
     verdict, the outcome (Promoted / RolledBack) as a line;
  2. both arms' 5xx share of answered requests, since the canary started, with anytime-valid
     intervals at the analysis confidence (`judge.prop_bounds`, the judge's own bounds);
  3. both arms' 422 share of rows (refusals by the input contract), the same way;
  4. answers that changed: the prediction shift (total-variation distance of the canary's
     predicted classes from stable's) and, in a shadow step, the disagreement on mirrored requests
     (1 - agreement), each with the judge's interval and the threshold it is held to.

Called by `modeldeploy_demo.__main__` (files in .cache/figures/) and `tests/unit/test_demo_plot.py`.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from modeldeploy_operator import judge  # noqa: E402

Obj = dict[str, Any]
# (at, window seconds, canary revision, stable revision) -> {"errors"|"refusals": {"canary"|"stable": [k, n]}}
Counts = Callable[[float, int, str, str], dict[str, dict[str, list[float]]]]
VERDICT_STYLE = {"Passed": ("o", "tab:green"), "Failed": ("X", "tab:red"), "Inconclusive": ("o", "0.6"),
                 "Error": ("s", "tab:orange")}  # fmt: skip
ARM_STYLE = {"canary": "tab:orange", "stable": "tab:blue"}
SHIFT, AGREEMENT = "prediction-shift", "shadow-agreement"


def _time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def rollout_record(
    title: str, revision: str, start: float, end: float, statuses: Sequence[tuple[float, Obj]],
    weights: Sequence[tuple[float, int]], events: Sequence[Obj], steps: Sequence[Obj], analysis: Obj,
    counts: Counts | None = None,
) -> Obj:  # fmt: skip
    """One rollout of `revision` (the canary) between `start` (the spec change) and `end`, times in
    seconds since `start`. `analysis` is the spec's analysis block (thresholds, confidence)."""

    def rel(t: float) -> float:
        return round(t - start, 2)

    window = [(t, st) for t, st in statuses if start - 0.5 <= t <= end]
    shadow_steps = {i for i, s in enumerate(steps) if "shadow" in s}
    record: Obj = {
        "title": title,
        "revision": revision,
        "end": rel(end),
        "confidence": float(analysis.get("confidence", 0.95)),
        "thresholds": {
            "error-rate-increase": analysis.get("maxErrorRateIncrease"),
            "refusal-rate-increase": analysis.get("maxRefusalRateIncrease"),
            SHIFT: analysis.get("maxPredictionShift"),
            AGREEMENT: next((s["shadow"].get("minAgreement", analysis.get("minAgreement")) for s in steps
                             if "shadow" in s), analysis.get("minAgreement")),  # fmt: skip
        },
        "weights": [[rel(t), w] for t, w in weights if start - 0.5 <= t <= end],
        "shadow": None,
        "analyses": [],
        "outcome": None,
        "events": [[rel(float(e["time"])), e["reason"], e.get("message", "")] for e in events
                   if start - 1 <= float(e["time"]) <= end + 1],  # fmt: skip
    }
    if not record["weights"] or record["weights"][0][0] > 0:
        before = [w for t, w in weights if t < start]
        record["weights"].insert(0, [0.0, before[-1] if before else 0])
    seen: set[str] = set()
    shadow_start: float | None = None
    for t, st in window:
        shadowing = st.get("canaryRevision") == revision and st.get("currentStep") in shadow_steps
        if shadowing and shadow_start is None:
            shadow_start = rel(t)
        elif not shadowing and shadow_start is not None and record["shadow"] is None:
            record["shadow"] = [shadow_start, rel(t)]
        if record["outcome"] is None:
            if st.get("phase") == "RolledBack" and st.get("failedRevision") == revision:
                record["outcome"] = ["RolledBack", rel(t), st.get("message") or ""]
            elif st.get("phase") == "Healthy" and st.get("stableRevision") == revision:
                record["outcome"] = ["Promoted", rel(t), st.get("message") or ""]
        last = st.get("lastAnalysis") or {}
        if last.get("revision") != revision or not last.get("time") or last["time"] in seen:
            continue
        seen.add(last["time"])
        at = _time(last["time"])
        entry: Obj = {
            "t": rel(at),
            "step": last.get("step"),
            "weight": last.get("weight"),
            "verdict": last.get("verdict"),
            "checks": {c["name"]: {k: c.get(k) for k in ("value", "lower", "upper", "samples", "samplesStable",
                                                       "threshold", "verdict")}
                       for c in last.get("checks") or []},  # fmt: skip
        }
        began, stable = st.get("canaryStartedAt"), st.get("stableRevision")
        if counts is not None and began and stable:
            entry["arms"] = counts(at, max(1, int(at - _time(began))), revision, stable)
        record["analyses"].append(entry)
    if shadow_start is not None and record["shadow"] is None:
        record["shadow"] = [shadow_start, rel(end)]
    return record


def _rate(k: float, n: float, alpha: float) -> tuple[float, float, float] | None:
    if n <= 0:
        return None
    lo, hi = judge.prop_bounds(min(k, n), n, alpha)
    return k / n, float(lo), float(hi)


def series(record: Obj) -> Obj:
    """What each panel plots: {"weight": [(t, w)], "decisions": [(t, weight, verdict)], "outcome": (t, what),
    "errors"/"refusals": {arm: [(t, rate, lower, upper, n)]}, "shift"/"disagreement": [(t, v, lo, hi, verdict)]}."""
    alpha = 1 - float(record.get("confidence", 0.95))
    out: Obj = {"weight": [tuple(p) for p in record["weights"]], "decisions": [],
                "errors": {"canary": [], "stable": []}, "refusals": {"canary": [], "stable": []},
                "shift": [], "disagreement": []}  # fmt: skip
    for a in record["analyses"]:
        t = float(a["t"])
        out["decisions"].append((t, a.get("weight") or 0, a.get("verdict")))
        for kind in ("errors", "refusals"):
            for arm, (k, n) in ((a.get("arms") or {}).get(kind) or {}).items():
                r = _rate(float(k), float(n), alpha)
                if r is not None:
                    out[kind][arm].append((t, *r, float(n)))
        shift = a["checks"].get(SHIFT) or {}
        if isinstance(shift.get("value"), int | float):
            out["shift"].append((t, shift["value"], shift["lower"], shift["upper"], shift.get("verdict")))
        agree = a["checks"].get(AGREEMENT) or {}
        if isinstance(agree.get("value"), int | float):
            out["disagreement"].append((t, 1 - agree["value"], 1 - agree["upper"], 1 - agree["lower"],
                                        agree.get("verdict")))  # fmt: skip
    outcome = record.get("outcome")
    out["outcome"] = (float(outcome[1]), str(outcome[0])) if outcome else None
    return out


def _intervals(ax: Any, points: list[tuple[Any, ...]], color: str, label: str, offset: float = 0.0) -> None:
    if not points:
        return
    t = [p[0] + offset for p in points]
    v = [p[1] for p in points]
    err = [[max(0.0, p[1] - p[2]) for p in points], [max(0.0, p[3] - p[1]) for p in points]]
    ax.errorbar(t, v, yerr=err, fmt="o-", ms=3.5, lw=1.2, capsize=2.5, color=color, label=label)


def draw(record: Obj, path: Path) -> Path:
    """Write the rollout's picture to `path` (PNG) and its record beside it (`.json`); returns `path`."""
    s = series(record)
    th = record.get("thresholds") or {}
    conf = float(record.get("confidence", 0.95))
    end = max([float(record.get("end") or 0.0), *(p[0] for p in s["weight"])])
    fig, axes = plt.subplots(4, 1, figsize=(8.6, 9.6), sharex=True, dpi=80,
                             gridspec_kw={"height_ratios": [1.2, 1, 1, 1]})  # fmt: skip
    ax_w, ax_e, ax_r, ax_s = axes
    fig.suptitle(record["title"], fontsize=12, x=0.01, y=0.995, ha="left")
    shadow = record.get("shadow")
    for ax in axes:
        if shadow:
            ax.axvspan(shadow[0], shadow[1], color="tab:purple", alpha=0.08, lw=0)
        if s["outcome"]:
            color = "tab:green" if s["outcome"][1] == "Promoted" else "tab:red"
            ax.axvline(s["outcome"][0], color=color, lw=1.5, ls="--")
        ax.grid(alpha=0.3)

    # 1. weight and decisions
    pts = sorted(s["weight"])
    ts = [p[0] for p in pts] + [end]
    ws = [p[1] for p in pts] + [pts[-1][1]]
    ax_w.step(ts, ws, where="post", color="tab:orange", lw=2, label="canary weight (HTTPRoute)")
    for verdict, (marker, color) in VERDICT_STYLE.items():
        d = [p for p in s["decisions"] if p[2] == verdict]
        if d:
            ax_w.scatter([p[0] for p in d], [p[1] for p in d], marker=marker, s=46, color=color, zorder=3,
                         edgecolor="black", linewidth=0.5, label=f"analysis {verdict}")  # fmt: skip
    if shadow:
        ax_w.text((shadow[0] + shadow[1]) / 2, 55, "shadow step\n(mirrored, weight 0)", ha="center", va="center",
                  fontsize=8, color="tab:purple")  # fmt: skip
    if s["outcome"]:
        ax_w.text(s["outcome"][0], 50, f" {s['outcome'][1]}", fontsize=10, fontweight="bold",
                  color="tab:green" if s["outcome"][1] == "Promoted" else "tab:red")  # fmt: skip
    ax_w.set_ylim(-5, 105)
    ax_w.set_ylabel("canary weight %")
    ax_w.legend(loc="upper left", fontsize=7.5, ncol=3, framealpha=0.9)

    # 2-3. both arms' rates with their intervals
    for ax, kind, what, key in ((ax_e, "errors", "5xx share of answered", "error-rate-increase"),
                                (ax_r, "refusals", "422 share of rows", "refusal-rate-increase")):  # fmt: skip
        for i, arm in enumerate(("stable", "canary")):
            _intervals(ax, s[kind][arm], ARM_STYLE[arm], arm, offset=0.25 * (i - 0.5))
        ax.set_ylabel(what)
        limit = th.get(key)
        note = f"judged: canary - stable <= {limit:g}" if isinstance(limit, int | float) else "not judged"
        ax.set_title(f"{what} since the canary started, {conf:.0%} anytime-valid intervals ({note})",
                     fontsize=8.5, loc="left")  # fmt: skip
        if not s[kind]["canary"]:
            ax.text(0.5, 0.5, "no user request reached the canary", transform=ax.transAxes, ha="center",
                    va="center", fontsize=9, color="0.4")  # fmt: skip
        if s[kind]["canary"] or s[kind]["stable"]:
            ax.legend(loc="upper right", fontsize=7.5)
        ax.set_ylim(bottom=0)

    # 4. answers that changed
    _intervals(ax_s, [p[:4] for p in s["shift"]], "tab:brown", "prediction shift (TV distance, user traffic)")
    _intervals(ax_s, [p[:4] for p in s["disagreement"]], "tab:purple", "disagreement on mirrored requests")
    if isinstance(th.get(SHIFT), int | float):
        ax_s.axhline(th[SHIFT], color="tab:brown", ls=":", lw=1.2, label=f"maxPredictionShift {th[SHIFT]:g}")
    if isinstance(th.get(AGREEMENT), int | float) and shadow:
        ax_s.axhline(1 - th[AGREEMENT], color="tab:purple", ls=":", lw=1.2,
                     label=f"1 - minAgreement {1 - th[AGREEMENT]:.2g}")  # fmt: skip
    tops = [p[3] for p in s["shift"] + s["disagreement"]]
    tops += [th[SHIFT] if isinstance(th.get(SHIFT), int | float) else 0.0,
             1 - th[AGREEMENT] if isinstance(th.get(AGREEMENT), int | float) and shadow else 0.0]
    ax_s.set_ylim(0, min(1.0, max(0.1, *tops) * 1.15))
    ax_s.set_ylabel("share of answers")
    ax_s.set_title(f"answers that changed, canary against stable, {conf:.0%} intervals", fontsize=8.5, loc="left")
    if ax_s.get_legend_handles_labels()[0]:
        ax_s.legend(loc="upper right", fontsize=7.5)
    ax_s.set_xlabel("seconds since the spec change")
    ax_s.set_xlim(-1, end + 1)
    outcome = record.get("outcome")
    if outcome and outcome[2]:
        fig.text(0.01, 0.005, "\n".join(textwrap.wrap(f"{outcome[0]} at +{outcome[1]:.1f}s: {outcome[2]}", 150)[:3]),
                 fontsize=6.5, va="bottom", color="0.25")  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 0.98))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Redraw PNGs from their records: `python -m modeldeploy_demo.plot .cache/figures/rollout-*.json`."""
    import sys

    for name in argv if argv is not None else sys.argv[1:]:
        src = Path(name)
        print(draw(json.loads(src.read_text()), src.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
