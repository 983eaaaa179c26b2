"""Batch scoring: same artifact checks and contract as the server, every rejected row reported."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from tests.server.conftest import Artifact, run_cli


def _write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_score_predicts_valid_rows_and_reports_rejected(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    art = artifacts["porosity"]
    good = art.rows[:5]
    rows = [["w1", *(str(float(v)) for v in good[0])], ["w2", "2350", "0.2", "80"], ["w3", "-999.25", "0.2", "80"],
            ["w4", "abc", "0.2", "80"], ["w5", "", "0.2", "80"], ["w6", "nan", "0.2", "inf"],
            *[[f"w{7 + i}", *(str(float(v)) for v in r)] for i, r in enumerate(good[1:])]]  # fmt: skip
    _write(tmp_path / "in.csv", ["well", "RHOB", "NPHI", "GR"], rows)
    env = art.env(MODELDEPLOY_CACHE_DIR=str(tmp_path / "c"), MODELDEPLOY_COMPILE="off")
    args = ["score", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"),
            "--rejects", str(tmp_path / "rejects.csv")]  # fmt: skip
    result = run_cli(args, env)
    assert result.returncode == 1, result.stderr
    assert "scored 5 of 10 rows; rejected 5" in result.stderr
    out = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["well"] for r in out] == ["w1", "w7", "w8", "w9", "w10"]
    assert np.array_equal(np.array([float(r["predict"]) for r in out]), art.model.predict(good))
    rejects = list(csv.DictReader((tmp_path / "rejects.csv").open()))
    reasons = [(r["row"], r["feature"], r["reason"]) for r in rejects]
    assert reasons == [("1", "RHOB", "out_of_range"), ("2", "RHOB", "null_sentinel"), ("3", "RHOB", "wrong_type"),
                       ("4", "RHOB", "null"), ("5", "RHOB", "nan"), ("5", "GR", "infinite")]  # fmt: skip
    assert run_cli([*args, "--allow-rejects"], env).returncode == 0


def test_score_refuses_a_bad_artifact_and_a_file_without_features(
    artifacts: dict[str, Artifact], tmp_path: Path
) -> None:
    art = artifacts["porosity"]
    _write(tmp_path / "in.csv", ["RHOB", "NPHI"], [["2.3", "0.2"]])
    args = ["score", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv")]
    result = run_cli(args, art.env(MODELDEPLOY_CACHE_DIR=str(tmp_path / "c")))
    assert result.returncode == 2 and "lacks required feature column(s) ['GR']" in result.stderr
    result = run_cli(args, art.env(MODELDEPLOY_CACHE_DIR=str(tmp_path / "c"), MODELDEPLOY_MODEL_SHA256="3" * 64))
    assert result.returncode == 2 and "digest mismatch" in result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_score_refuses_repeated_columns_and_reads_only_plain_numbers(
    artifacts: dict[str, Artifact], tmp_path: Path
) -> None:
    """The hostile-input classes of the HTTP boundary, applied to CSV: a repeated column (a reader keeps
    one of the two values, silently) is refused naming it; "1_000", other scripts' digits and hex are
    not numbers (Python's float() reads them); a UTF-8 byte-order mark is harmless."""
    art = artifacts["porosity"]
    args = ["score", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"),
            "--rejects", str(tmp_path / "rejects.csv")]  # fmt: skip
    env = art.env(MODELDEPLOY_CACHE_DIR=str(tmp_path / "c"), MODELDEPLOY_COMPILE="off")
    _write(tmp_path / "in.csv", ["RHOB", "NPHI", "GR", "RHOB"], [["-999", "0.2", "80", "2.3"]])
    result = run_cli(args, env)
    assert result.returncode == 2 and "repeats column(s) ['RHOB']" in result.stderr, result.stderr
    _write(tmp_path / "in.csv", ["RHOB", "NPHI", "GR"],
           [["2.3", "0.2", "1_0"], ["2.3", "0.2", "\u0661\u0662"], ["2.3", "0.2", "0x10"], ["2.3", "0.2", "80"]])
    (tmp_path / "in.csv").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "in.csv").read_bytes())
    result = run_cli(args, env)
    assert result.returncode == 1 and "scored 1 of 4 rows; rejected 3 (wrong_type: 3)" in result.stderr, result.stderr
