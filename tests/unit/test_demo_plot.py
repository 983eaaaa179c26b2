"""`make demo`'s rollout picture (hack/modeldeploy_demo/plot.py) over a small synthetic rollout:
the record keeps every decision the operator made, the picture plots them, and a PNG is written."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modeldeploy_demo import plot

START = 1_800_000_000.0
STEPS: list[dict[str, Any]] = [{"shadow": {"seconds": 10, "percent": 50}}, {"setWeight": 20},
                               {"pause": {"seconds": 5}}]  # fmt: skip
ANALYSIS = {"confidence": 0.95, "minAgreement": 0.97, "maxErrorRateIncrease": 0.05, "maxRefusalRateIncrease": 0.05,
            "maxPredictionShift": 0.2}  # fmt: skip


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def analysis(t: float, step: int, weight: int, verdict: str, checks: list[dict[str, Any]]) -> dict[str, Any]:
    return {"time": iso(START + t), "revision": "rev2", "step": step, "weight": weight, "verdict": verdict,
            "checks": checks}  # fmt: skip


AGREE = {"name": "shadow-agreement", "value": 0.99, "lower": 0.975, "upper": 1.0, "samples": 400, "verdict": "Passed"}
SHIFT = {"name": "prediction-shift", "value": 0.01, "lower": 0.0, "upper": 0.15, "samples": 300,
         "samplesStable": 900, "verdict": "Passed"}  # fmt: skip


def statuses() -> list[tuple[float, dict[str, Any]]]:
    base = {"phase": "Progressing", "canaryRevision": "rev2", "stableRevision": "rev1",
            "canaryStartedAt": iso(START + 2)}  # fmt: skip
    return [
        (START + 1, {**base, "currentStep": None}),
        (START + 3, {**base, "currentStep": 0, "canaryWeight": 0}),
        (START + 8, {**base, "currentStep": 0, "lastAnalysis": analysis(8, 0, 0, "Inconclusive", [])}),
        (START + 13, {**base, "currentStep": 1, "canaryWeight": 20, "lastAnalysis": analysis(13, 0, 0, "Passed",
                                                                                              [AGREE])}),
        (START + 19, {**base, "currentStep": 2, "canaryWeight": 20,
                      "lastAnalysis": analysis(19, 2, 20, "Passed", [SHIFT])}),
        (START + 21, {"phase": "Healthy", "stableRevision": "rev2", "message": "promoted rev2",
                      "lastAnalysis": analysis(19, 2, 20, "Passed", [SHIFT])}),
    ]  # fmt: skip


def counts(at: float, window: int, canary: str, stable: str) -> dict[str, dict[str, list[float]]]:
    assert (canary, stable) == ("rev2", "rev1") and window == int(at - START - 2)
    n = 10.0 * window
    return {"errors": {"canary": [0.0, n], "stable": [1.0, 3 * n]},
            "refusals": {"canary": [0.05 * n, n], "stable": [0.15 * n, 3 * n]}}  # fmt: skip


def record() -> dict[str, Any]:
    weights = [(START - 30, 0), (START + 13, 20), (START + 21, 0)]
    events = [{"time": START + 21, "reason": "Promoted", "message": "promoted rev2"},
              {"time": START - 100, "reason": "StableDeployed", "message": "older"}]  # fmt: skip
    return plot.rollout_record("v2: promoted", "rev2", START, START + 24, statuses(), weights, events, STEPS,
                               ANALYSIS, counts)  # fmt: skip


def test_the_record_keeps_each_analysis_once_with_both_arms_and_the_outcome() -> None:
    r = record()
    assert [(a["t"], a["verdict"]) for a in r["analyses"]] == [(8.0, "Inconclusive"), (13.0, "Passed"),
                                                              (19.0, "Passed")]  # fmt: skip
    assert r["analyses"][2]["arms"]["errors"]["stable"] == [1.0, 510.0]
    assert r["outcome"][:2] == ["Promoted", 21.0]
    assert r["shadow"] == [3.0, 13.0]
    assert r["weights"] == [[0.0, 0], [13.0, 20], [21.0, 0]]
    assert [e[1] for e in r["events"]] == ["Promoted"]  # only this rollout's
    assert r["thresholds"]["shadow-agreement"] == 0.97


def test_series_plots_every_decision_and_both_arms_with_intervals() -> None:
    s = plot.series(record())
    assert [(t, verdict) for t, _, verdict in s["decisions"]] == [(8.0, "Inconclusive"), (13.0, "Passed"),
                                                                 (19.0, "Passed")]  # fmt: skip
    assert s["outcome"] == (21.0, "Promoted")
    for kind in ("errors", "refusals"):
        for arm in ("canary", "stable"):
            assert len(s[kind][arm]) == 3
            for _, rate, lower, upper, _ in s[kind][arm]:
                assert 0 <= lower <= rate <= upper <= 1
    assert s["errors"]["stable"][-1][1] == 1 / 510
    assert s["disagreement"] == [(13.0, 1 - 0.99, 0.0, 1 - 0.975, "Passed")]
    assert s["shift"] == [(19.0, 0.01, 0.0, 0.15, "Passed")]


def test_draw_writes_a_png_and_its_record(tmp_path: Path) -> None:
    path = plot.draw(record(), tmp_path / "figures" / "rollout-v2.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert json.loads(path.with_suffix(".json").read_text())["outcome"][0] == "Promoted"


def test_a_rollback_in_the_shadow_step_draws_without_user_traffic(tmp_path: Path) -> None:
    failed = {**AGREE, "value": 0.86, "lower": 0.71, "upper": 0.96, "verdict": "Failed"}
    base = {"phase": "Progressing", "canaryRevision": "rev3", "stableRevision": "rev2", "currentStep": 0,
            "canaryStartedAt": iso(START + 1)}  # fmt: skip
    sts = [(START + 2, base),
           (START + 9, {**base, "phase": "RolledBack", "canaryRevision": None, "currentStep": None,
                        "failedRevision": "rev3", "message": "shadow-agreement 0.86 Failed",
                        "lastAnalysis": {**analysis(9, 0, 0, "Failed", [failed]), "revision": "rev3"}})]  # fmt: skip
    r = plot.rollout_record("v3: rolled back", "rev3", START, START + 12, sts, [], [], STEPS, ANALYSIS)
    assert r["outcome"][:2] == ["RolledBack", 9.0] and r["shadow"] == [2.0, 9.0]
    assert plot.series(r)["decisions"] == [(9.0, 0, "Failed")]
    path = plot.draw(r, tmp_path / "rollout-v3.png")
    assert path.stat().st_size > 10_000
