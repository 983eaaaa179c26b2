"""`modeldeploy undo` after a reverted failed canary (issue 11 M8.2): without --to-version it must
not pick the rolled-back model, which is still running at 0 replicas as status.failedRevision."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy_operator.cli_format import CliError, revision_models, undo_target


def model(version: str) -> dict[str, str]:
    return {"uri": f"https://models.example/v{version}.joblib", "sha256": version * 64, "version": version,
            "format": "joblib", "method": "predict"}  # fmt: skip


def deployment(revision: str, version: str, created: str) -> dict[str, Any]:
    env = [{"name": f"MODELDEPLOY_MODEL_{k.upper()}", "value": v} for k, v in model(version).items()]
    return {
        "metadata": {"name": f"iris-{revision}", "creationTimestamp": created,
                     "labels": {"modeldeploy.io/name": "iris", "modeldeploy.io/revision": revision},
                     "ownerReferences": [{"uid": "uid-1"}]},
        "spec": {"template": {"spec": {"containers": [{"name": "server", "env": env}]}}},
    }  # fmt: skip


# v1 -> v2 promoted (v1 pruned later), v3 rolled back, the spec reverted to v2
OBJ = {
    "metadata": {"name": "iris", "uid": "uid-1"},
    "spec": {"model": model("2")},
    "status": {"stableRevision": "r2", "failedRevision": "r3", "phase": "Healthy"},
}
DEPLOYMENTS = [deployment("r3", "3", "2026-12-01T12:00:00Z"), deployment("r2", "2", "2026-12-01T11:00:00Z")]


def test_undo_never_picks_the_rolled_back_model_by_itself() -> None:
    with pytest.raises(CliError, match="no previous model is recorded"):
        undo_target(OBJ, None, revision_models(OBJ, DEPLOYMENTS, skip_failed=True))


def test_undo_to_an_explicit_version_may_still_name_it() -> None:
    assert undo_target(OBJ, "3", revision_models(OBJ, DEPLOYMENTS))["version"] == "3"
