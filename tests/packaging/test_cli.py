"""The `modeldeploy` CLI without a cluster: rendering of status dicts, the verdict behind the exit
code, the undo decision, and the one-line errors for a missing kubeconfig or an unreachable API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modeldeploy_operator import cli
from modeldeploy_operator.cli_format import (
    ANNOTATION_PREVIOUS_MODEL,
    CliError,
    render_status,
    revision_models,
    undo_patch,
    undo_target,
    verdict,
)

V7 = {"uri": "https://models.example/porosity/7/model.joblib", "sha256": "a" * 64, "version": "7"}
V8 = {"uri": "https://models.example/porosity/8/model.joblib", "sha256": "b" * 64, "version": "8"}
STEPS = [{"setWeight": 10}, {"pause": {"seconds": 60}}, {"setWeight": 50}, {"pause": {}}]


def obj(
    status: dict[str, Any], *, generation: int = 2, model: dict[str, Any] = V8, **annotations: str
) -> dict[str, Any]:
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "porosity", "namespace": "geo", "generation": generation, "annotations": annotations},
        "spec": {"model": model, "rollout": {"steps": STEPS}},
        "status": status,
    }


PROGRESSING = {
    "observedGeneration": 2,
    "phase": "Progressing",
    "message": "step 3/4: canary at 50%",
    "stableRevision": "5d8f7c",
    "stableVersion": "7",
    "canaryRevision": "9a1b2c",
    "canaryVersion": "8",
    "currentStep": 2,
    "canaryWeight": 50,
    "conditions": [
        {"type": "Progressing", "status": "True", "lastTransitionTime": "2026-11-21T12:00:00Z", "reason": "StepStarted"}
    ],
    "lastAnalysis": {
        "time": "2026-11-21T12:01:00Z",
        "revision": "9a1b2c",
        "step": 2,
        "verdict": "Passed",
        "message": "all checks passed",
        "checks": [
            {
                "name": "error-rate",
                "query": "sum(rate(...))",
                "windowSeconds": 30,
                "samples": 812,
                "value": 0.0012,
                "threshold": "<= 0.01",
                "verdict": "Passed",
            },
            {"name": "latency-p99", "query": "histogram_quantile(...)", "samples": 812, "value": 0.031,
             "threshold": "<= 0.25", "verdict": "Passed"},
        ],
    },
    "history": [
        {"revision": "5d8f7c", "version": "7", "outcome": "Deployed", "time": "2026-11-21T11:00:00Z"},
    ],
}  # fmt: skip

HEALTHY = {
    "observedGeneration": 2,
    "phase": "Healthy",
    "stableRevision": "9a1b2c",
    "stableVersion": "8",
    "history": [
        {"revision": "5d8f7c", "version": "7", "outcome": "Deployed", "time": "2026-11-21T11:00:00Z"},
        {"revision": "9a1b2c", "version": "8", "outcome": "Promoted", "time": "2026-11-21T12:05:00Z"},
    ],
}
ROLLED_BACK = {
    "observedGeneration": 2,
    "phase": "RolledBack",
    "message": "canary error rate 4.2% > 1% (n=812)",
    "stableRevision": "5d8f7c",
    "stableVersion": "7",
    "failedRevision": "9a1b2c",
}


def test_progressing_view_shows_step_weights_analysis_and_history() -> None:
    text = render_status(obj(PROGRESSING))
    lines = text.splitlines()
    assert "Phase:      Progressing: step 3/4: canary at 50%" in lines
    assert "Stable:     7 (revision 5d8f7c)" in lines
    assert "Canary:     8 (revision 9a1b2c)  weight 50%" in lines
    assert 'Step:       3/4 {"setWeight": 50}' in lines
    assert any(line.startswith("Last analysis: Passed at 2026-11-21T12:01:00Z on revision 9a1b2c") for line in lines)
    error_rate = next(line for line in lines if "error-rate" in line).split()
    assert error_rate == ["error-rate", "0.0012", "<=", "0.01", "812", "30s", "Passed"]
    assert "latency-p99" in text and "0.031" in text
    assert any(line.split()[:4] == ["2026-11-21T11:00:00Z", "7", "5d8f7c", "Deployed"] for line in lines)


def test_history_is_newest_first() -> None:
    lines = render_status(obj(HEALTHY)).splitlines()
    i = lines.index("History:")
    assert lines[i + 1].split() == ["TIME", "VERSION", "REVISION", "OUTCOME", "REASON"]
    assert lines[i + 2].split()[1:4] == ["8", "9a1b2c", "Promoted"]
    assert lines[i + 3].split()[1:4] == ["7", "5d8f7c", "Deployed"]


def test_rolled_back_view_names_the_failed_revision() -> None:
    text = render_status(obj(ROLLED_BACK))
    assert "Phase:      RolledBack: canary error rate 4.2% > 1% (n=812)" in text
    assert "Failed:     ? (revision 9a1b2c) (not retried until changed)" in text
    assert "Canary:     -" in text


def test_unreconciled_object() -> None:
    text = render_status(obj({}, generation=1))
    assert "Phase:      Pending (not reconciled yet)" in text
    assert "(no history yet)" in text


@pytest.mark.parametrize(
    ("status", "generation", "expected"),
    [
        (HEALTHY, 2, "healthy"),
        (HEALTHY, 3, "progressing"),  # the operator has not seen the latest spec yet
        (PROGRESSING, 2, "progressing"),
        (ROLLED_BACK, 2, "failed"),
        ({"observedGeneration": 2, "phase": "Aborted"}, 2, "failed"),
        ({"observedGeneration": 2, "phase": "Degraded"}, 2, "failed"),
        ({"observedGeneration": 2, "phase": "Healthy", "canaryRevision": "x"}, 2, "progressing"),
        ({}, 1, "progressing"),
    ],
)
def test_verdict(status: dict[str, Any], generation: int, expected: str) -> None:
    assert verdict(obj(status, generation=generation)) == expected


def test_unreadable_status_is_a_one_line_error() -> None:
    with pytest.raises(CliError, match=r"status\.phase") as err:
        render_status(obj({"phase": ["not", "a", "string"]}))
    assert err.value.code == 5


def test_undo_uses_the_previous_model_annotation_and_remembers_the_current_one() -> None:
    o = obj(HEALTHY, **{ANNOTATION_PREVIOUS_MODEL: json.dumps(V7)})
    target = undo_target(o, None)
    assert target == {**V7, "format": None, "method": None}
    patch = undo_patch(o, target)
    assert patch["spec"]["model"]["sha256"] == V7["sha256"]
    assert patch["spec"]["model"]["format"] is None  # merge patch: a key V7 lacks is removed
    assert json.loads(patch["metadata"]["annotations"][ANNOTATION_PREVIOUS_MODEL]) == V8


def test_undo_prefers_models_recorded_in_history() -> None:
    v6 = {"uri": "s3://models/porosity/6/model.skops", "version": "6"}
    status = {**HEALTHY, "history": [{**h, "model": m} for h, m in zip(HEALTHY["history"], (v6, V8), strict=True)]}
    o = obj(status, **{ANNOTATION_PREVIOUS_MODEL: json.dumps(V7)})
    assert undo_target(o, None)["version"] == "6"  # newest recorded model that differs from the current one
    assert undo_target(o, "7")["uri"] == V7["uri"]


def test_undo_errors_name_what_is_missing() -> None:
    with pytest.raises(CliError, match="no previous model is recorded") as err:
        undo_target(obj(HEALTHY), None)
    assert err.value.code == 3
    with pytest.raises(CliError, match=r"no recorded model has version '5' \(recorded: 7\)"):
        undo_target(obj(HEALTHY, **{ANNOTATION_PREVIOUS_MODEL: json.dumps(V7)}), "5")
    broken = {**V7, "sha256": None}
    with pytest.raises(CliError, match="sha256 is required"):
        undo_target(obj(HEALTHY, **{ANNOTATION_PREVIOUS_MODEL: json.dumps(broken)}), None)


def test_no_kubeconfig_exits_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code = cli.main(["--kubeconfig", str(tmp_path / "missing"), "status", "porosity"])
    err = capsys.readouterr().err
    assert code == 4
    assert err.startswith("modeldeploy: no usable Kubernetes configuration") and err.count("\n") == 1


def test_unreachable_api_exits_4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u, namespace: geo}}]\n"
    )
    code = cli.main(["--kubeconfig", str(kubeconfig), "promote", "porosity"])
    err = capsys.readouterr().err
    assert code == 4
    assert (
        err.startswith("modeldeploy: cannot reach the Kubernetes API at https://127.0.0.1:1") and err.count("\n") == 1
    )


def test_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["status"])
    assert exc.value.code == 2


def _deployment(revision: str, model: dict[str, str], created: str, uid: str = "uid-1") -> dict[str, Any]:
    env = [{"name": f"MODELDEPLOY_MODEL_{k.upper()}", "value": v} for k, v in model.items()]
    env.append({"name": "MODELDEPLOY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    return {
        "metadata": {
            "name": f"porosity-{revision}",
            "creationTimestamp": created,
            "labels": {"modeldeploy.io/name": "porosity", "modeldeploy.io/revision": revision},
            "ownerReferences": [{"uid": uid, "kind": "ModelDeployment", "name": "porosity"}],
        },
        "spec": {"template": {"spec": {"containers": [{"name": "server", "env": env}]}}},
    }


def test_undo_after_a_rollback_restores_the_stable_revisions_model() -> None:
    o = obj(ROLLED_BACK)
    o["metadata"]["uid"] = "uid-1"
    deployments = [
        _deployment("9a1b2c", {**V8, "format": "joblib", "method": "predict"}, "2026-11-21T12:00:00Z"),
        _deployment("5d8f7c", {**V7, "format": "joblib", "method": "predict"}, "2026-11-21T11:00:00Z"),
        _deployment("ffffff", {**V7, "version": "x"}, "2026-11-21T13:00:00Z", uid="someone-else"),
    ]
    running = revision_models(o, deployments)
    assert [m["version"] for m in running] == ["7", "8"]  # stable first; not owned: ignored
    target = undo_target(o, None, running)
    assert target == {**V7, "format": "joblib", "method": "predict"}
    # the failed canary's model equals the current spec (format/method made explicit): not a target
    assert undo_target(o, "8", running)["uri"] == V8["uri"]
