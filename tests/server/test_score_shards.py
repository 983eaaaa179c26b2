"""A batch run, one shard per process, as an Indexed Job runs it: real models, real Parquet and CSV files.

Each shard is the real `modeldeploy-server score --shards N` console script with JOB_COMPLETION_INDEX
set, exactly as the operator's CronJob starts it. A run is complete (`_SUCCESS`) only once every
shard succeeded; the predictions equal the in-process model's and the online server's answers.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.server.conftest import Artifact, Served, run_cli


def _shard(art: Artifact, tmp: Path, inp: str, out: Path, index: int, shards: int, run: str, **env: str) -> Any:
    args = ["score", "--input", inp, "--output", out.as_uri(), "--shards", str(shards), "--run-id", run]
    return run_cli(args, art.env(MODELDEPLOY_CACHE_DIR=str(tmp / "cache"), JOB_COMPLETION_INDEX=str(index), **env))


def _parquet(path: Path, rows: np.ndarray, names: list[str], group_rows: int, ids: bool = True) -> None:
    columns: dict[str, Any] = {"id": [f"r{i}" for i in range(len(rows))]} if ids else {}
    columns |= {name: rows[:, j] for j, name in enumerate(names)}
    pq.write_table(pa.table(columns), path, row_group_size=group_rows)


def test_parquet_run_of_four_shards_matches_the_model_and_the_online_server(
    artifacts: dict[str, Artifact], serve: Any, tmp_path: Path
) -> None:
    art = artifacts["forest"]
    rows = np.vstack([art.rows] * 3)  # 450 rows, 7 row groups of 64: shards cut across groups
    names = [i["name"] for i in art.inputs]
    _parquet(tmp_path / "in.parquet", rows, names, group_rows=64)
    out = tmp_path / "out"
    for index in (2, 0, 3):  # any order; the run is not complete before its last shard
        result = _shard(art, tmp_path, (tmp_path / "in.parquet").as_uri(), out, index, 4, "run-1")
        assert result.returncode == 0, result.stderr
        assert not (out / "_SUCCESS").exists()
    began = time.monotonic()
    result = _shard(art, tmp_path, (tmp_path / "in.parquet").as_uri(), out, 1, 4, "run-1")
    wall = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert manifest["complete"] and manifest["run"] == "run-1" and manifest["rows"] == 450
    assert manifest["sha256"] == art.sha256 and manifest["revision"] == "abc123" and manifest["rejected"] == 0
    parts = pa.concat_tables([pq.read_table(out / p) for p in manifest["parts"]])
    assert parts.column("row").to_pylist() == list(range(450))
    assert parts.column("id").to_pylist() == [f"r{i}" for i in range(450)]
    got = np.column_stack([parts.column(f"predict_proba_{c}").to_numpy() for c in range(3)])
    assert np.array_equal(got, art.model.predict_proba(rows))  # bit-identical, not approximately
    served: Served = serve(art.settings(tmp_path / "served-cache"))
    answer = served.client.post(f"/v1/models/{art.name}:predict", json={"instances": rows.tolist()})
    assert answer.status_code == 200, answer.text
    assert np.array_equal(got, np.array(answer.json()["predictions"]))
    report = json.loads((out / "runs/run-1/report-00001.json").read_text())
    assert report["firstRow"] == 112 and report["rows"] == 113 and report["outcome"] == "Succeeded"
    assert report["path"] == served.app.loader.preloaded.path  # type: ignore[union-attr]  # the server's function
    # where the shard's time went: the process start (interpreter, scikit-learn's imports), then its
    # own work, phase by phase; together within the wall time the caller saw
    phases = report["phases"]
    assert list(phases) == ["start", "load", "read", "score", "write"], phases
    assert all(v >= 0 for v in phases.values()) and phases["start"] > 0, phases
    assert sum(phases.values()) - phases["start"] <= report["seconds"] + 0.005, (phases, report["seconds"])
    assert phases["start"] + report["seconds"] <= wall, (phases, report["seconds"], wall)


def test_a_shard_with_rejects_fails_and_the_last_complete_run_stays_the_result(
    artifacts: dict[str, Artifact], tmp_path: Path
) -> None:
    art = artifacts["porosity"]
    good = art.rows[:40]
    inp, out = tmp_path / "in.csv", tmp_path / "out"
    names = [i["name"] for i in art.inputs]

    def write(rows: list[list[str]]) -> None:
        with inp.open("w", newline="") as handle:
            csv.writer(handle).writerows([["well", *names], *rows])

    write([[f"w{i}", *(repr(float(v)) for v in r)] for i, r in enumerate(good)])
    for index in range(2):
        assert _shard(art, tmp_path, str(inp), out, index, 2, "good").returncode == 0
    first = json.loads((out / "_SUCCESS").read_text())
    assert first["run"] == "good" and first["rows"] == 40
    bad = [[f"w{i}", *(repr(float(v)) for v in r)] for i, r in enumerate(good)]
    bad[31][1] = "-999.25"  # a null sentinel in shard 1's range (rows 20..39)
    write(bad)
    assert _shard(art, tmp_path, str(inp), out, 0, 2, "bad").returncode == 0
    args = ["score", "--input", str(inp), "--output", out.as_uri(), "--shards", "2", "--run-id", "bad"]
    env = art.env(MODELDEPLOY_CACHE_DIR=str(tmp_path / "cache"), JOB_COMPLETION_INDEX="1")
    result = run_cli(args, env)
    assert result.returncode == 1 and "rejected 1 (null_sentinel: 1)" in result.stderr, result.stderr
    assert json.loads((out / "_SUCCESS").read_text()) == first  # the failed run never replaced it
    assert not (out / "runs/bad/_SUCCESS").exists()
    failed = json.loads((out / "runs/bad/report-failed-00001.json").read_text())
    assert failed["outcome"] == "Rejected" and failed["reasons"] == {"null_sentinel": 1}
    # the one line the operator puts in status.batch[] and the BatchFailed Event names the row (in the
    # whole input), the feature and the reason
    said = failed["message"]
    assert said.startswith("1 of 20 rows rejected and allowRejects is false; first: row 31, feature 'RHOB': "), said
    assert said.endswith("(null_sentinel)"), said
    rejects = list(csv.DictReader((out / "runs/bad/rejects-00001.csv").open()))
    assert [(r["row"], r["feature"], r["value"], r["reason"]) for r in rejects] == [
        ("31", "RHOB", "-999.25", "null_sentinel")
    ]  # the row's number in the whole input, not in the shard
    # allowRejects: the same shard succeeds, and the run completes with its rejected row counted
    ok = run_cli([*args, "--allow-rejects"], env)
    assert ok.returncode == 0, ok.stderr
    final = json.loads((out / "_SUCCESS").read_text())
    assert final["run"] == "bad" and final["rows"] == 40 and final["scored"] == 39 and final["rejected"] == 1


@pytest.mark.parametrize("problem", ["unreadable", "bad-index", "unsupported-output"])
def test_a_refused_shard_exits_2_naming_the_cause_and_writes_nothing_complete(
    artifacts: dict[str, Artifact], tmp_path: Path, problem: str
) -> None:
    art = artifacts["porosity"]
    inp, out = tmp_path / "in.parquet", tmp_path / "out"
    inp.write_bytes(b"PAR1 this is not a parquet file")
    target, index, expected = out.as_uri(), 0, "cannot read input Parquet"
    if problem == "bad-index":
        _parquet(inp, art.rows, [i["name"] for i in art.inputs], 50, ids=False)
        index, expected = 3, "shard index 3 is outside 0..1"
    if problem == "unsupported-output":
        target, expected = "https://example.invalid/out", "output URI 'https://example.invalid/out' has scheme"
    args = ["score", "--input", str(inp), "--output", target, "--shards", "2", "--run-id", "r"]
    result = run_cli(args, art.env(MODELDEPLOY_CACHE_DIR=str(tmp_path / "c"), JOB_COMPLETION_INDEX=str(index)))
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert not (out / "_SUCCESS").exists()


def test_a_run_rerun_under_the_same_name_is_not_completed_by_the_earlier_jobs_reports(
    artifacts: dict[str, Artifact], tmp_path: Path
) -> None:
    """`kubectl create job NAME` again after deleting the Job: the run's folder still holds the first
    Job's reports. A shard of the second Job that fails must leave the run incomplete, not let the
    other shard's report and the first Job's stale one make a `_SUCCESS` of mixed parts."""
    art = artifacts["porosity"]
    names = [i["name"] for i in art.inputs]
    inp, out = tmp_path / "in.csv", tmp_path / "out"

    def write(rows: list[list[str]]) -> None:
        with inp.open("w", newline="") as handle:
            csv.writer(handle).writerows([["well", *names], *rows])

    good = [[f"w{i}", *(repr(float(v)) for v in r)] for i, r in enumerate(art.rows[:40])]
    write(good)
    for index in range(2):  # the first Job (uid-1) completes the run
        first_job = _shard(art, tmp_path, str(inp), out, index, 2, "daily", MODELDEPLOY_BATCH_ATTEMPT="uid-1")
        assert first_job.returncode == 0, first_job.stderr
    first = json.loads((out / "_SUCCESS").read_text())
    assert first["run"] == "daily" and first["attempt"] == "uid-1"

    def written() -> list[tuple[int, int]]:  # a rewrite with equal content is a rewrite too
        return [((out / p).stat().st_ino, (out / p).stat().st_mtime_ns) for p in ("_SUCCESS", "runs/daily/_SUCCESS")]

    before = written()
    bad = [list(r) for r in good]
    bad[31][1] = "-999.25"
    write(bad)
    failed = _shard(art, tmp_path, str(inp), out, 1, 2, "daily", MODELDEPLOY_BATCH_ATTEMPT="uid-2")
    assert failed.returncode == 1, failed.stderr
    # shard 0 of the second Job succeeds last: report-00001.json is the first Job's, not this one's
    assert _shard(art, tmp_path, str(inp), out, 0, 2, "daily", MODELDEPLOY_BATCH_ATTEMPT="uid-2").returncode == 0
    assert written() == before and json.loads((out / "_SUCCESS").read_text()) == first
    # the second Job's shard 1 retried with a fixed input: now the run completes, all of uid-2
    write(good)
    assert _shard(art, tmp_path, str(inp), out, 1, 2, "daily", MODELDEPLOY_BATCH_ATTEMPT="uid-2").returncode == 0
    final = json.loads((out / "_SUCCESS").read_text())
    assert final["run"] == "daily" and final["attempt"] == "uid-2" and final["rows"] == 40
