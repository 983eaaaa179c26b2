"""Printing for the demo and the e2e tests: live rollout lines, the per-phase table, the figures file.

Called by `modeldeploy_demo.__main__` and `tests/e2e/`. No I/O besides stdout and the JSON file.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from modeldeploy_demo.workload import Stats

FIGURES = Path(__file__).resolve().parents[2] / ".cache" / "figures"


def check(status: dict[str, Any], name: str) -> dict[str, Any]:
    last = status.get("lastAnalysis") or {}
    return next((c for c in last.get("checks") or [] if c.get("name") == name), {})


def shadow_text(c: dict[str, Any]) -> str:
    """`0.9942 in [0.9801, 0.9990] n=512` from a shadow-agreement check record."""
    if not isinstance(c.get("value"), int | float):
        return f"- n={c.get('samples') or 0:.0f}"
    return f"{c['value']:.4f} in [{c['lower']:.4f}, {c['upper']:.4f}] n={c.get('samples') or 0:.0f}"


def live_line(elapsed: float, status: dict[str, Any], steps: list[dict[str, Any]], served: int) -> str:
    """One line per change of the rollout: step, weight, what the last analysis measured, its verdict."""
    i = status.get("currentStep")
    if i is None:
        where = "waiting for ready" if status.get("canaryRevision") else str(status.get("phase"))
    elif i >= len(steps):
        where = "promotion"
    else:
        s = steps[i]
        if "shadow" in s:
            what = f"shadow {s['shadow']['percent']}%"
        else:
            what = f"setWeight {s['setWeight']}" if "setWeight" in s else f"pause {s['pause'].get('seconds', '∞')}s"
        where = f"step {i + 1}/{len(steps)} {what}"
    last = status.get("lastAnalysis") or {}
    judged = status.get("canaryRevision") or status.get("failedRevision")
    if last.get("revision") != judged or status.get("phase") == "Healthy":
        status = {**status, "lastAnalysis": {}}  # an older revision's analysis: not this canary's
    n, err, p99 = check(status, "requests"), check(status, "error-rate"), check(status, "latency-p99")

    def num(c: dict[str, Any], fmt: str) -> str:
        v = c.get("value")
        return format(v, fmt) if isinstance(v, int | float) else "-"

    verdict = (status.get("lastAnalysis") or {}).get("verdict", "-")
    agree = check(status, "shadow-agreement")
    weight = status.get("canaryWeight") or 0
    head = f"  +{elapsed:5.1f}s  {status.get('phase', '?'):<11} {where:<24} weight {weight:>3}%"
    if agree:  # a shadow step: the canary's answers against stable's on mirrored requests
        return f"{head}  agreement {shadow_text(agree):<28} {verdict:<12}  (client answers {served})"
    shift = check(status, "prediction-shift")
    changed = f"  shift {shift_text(shift)}" if shift else ""
    return (
        f"{head}"
        f"  canary n={num(n, '.0f'):>4}  5xx {num(err, '.2%'):>6}  p99 {num(p99, '.3f'):>6}s{changed}  {verdict:<12}"
        f"  (client answers {served})"
    )


def shift_text(c: dict[str, Any]) -> str:
    """`0.012 [0.000, 0.151]` from a prediction-shift check record (TV distance and its interval)."""
    if not isinstance(c.get("value"), int | float):
        return f"{'-':<20}"
    return f"{c['value']:.3f} [{c['lower']:.3f}, {c['upper']:.3f}]"


def decisions(events: list[dict[str, Any]], phases: list[tuple[str, float, float]]) -> dict[str, str]:
    """Event reasons per phase, compressed ('WeightChanged x3, AnalysisPassed x2, Promoted').

    Event times have whole seconds: each event goes to the first phase it can belong to.
    """
    counts: dict[str, Counter[str]] = {name: Counter() for name, _, _ in phases}
    for e in events:
        t = float(e["time"])
        name = next((n for n, start, end in phases if start - 1 < t <= end), None)
        if name is not None:
            counts[name][str(e["reason"])] += 1
    return {name: ", ".join(f"{r} x{n}" if n > 1 else r for r, n in c.items()) or "-" for name, c in counts.items()}


def table(rows: list[tuple[str, float, Stats, str]]) -> str:
    """Per phase: seconds, requests, 2xx, 4xx (contract), 5xx, no answer, p50, p99, decisions."""
    head = f"{'phase':<22} {'secs':>5} {'requests':>8} {'2xx':>6} {'422':>5} {'5xx':>5} {'no-ans':>6} " \
           f"{'p50 ms':>7} {'p99 ms':>7}  decisions"  # fmt: skip
    lines = [head, "-" * len(head)]
    for name, secs, s, why in rows:
        lines.append(
            f"{name:<22} {secs:>5.0f} {s.requests:>8} {s.ok:>6} {s.rejected:>5} {s.errors:>5} {s.no_answer:>6} "
            f"{s.p50 * 1000:>7.1f} {s.p99 * 1000:>7.1f}  {why}"
        )
    return "\n".join(lines)


def write_figures(name: str, figures: dict[str, Any]) -> Path:
    """Merge `figures` into .cache/figures/<name>.json (each test adds its own keys)."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    path = FIGURES / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **figures}, indent=2, sort_keys=True) + "\n")
    return path
