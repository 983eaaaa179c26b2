"""`modeldeploy profile`: the reference profile from a training CSV and the real artifact, through
the real console script; the printed sha256 is the written file's; the server loads what it wrote."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modeldeploy_server import profile
from modeldeploy_server.runtime import load_runtime
from tests.server.conftest import Artifact, sha256_of

CLI = str(Path(sys.executable).with_name("modeldeploy"))


def _csv(path: Path, names: list[str], rows: np.ndarray, extra: bool = True) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *names] if extra else names)
        for i, row in enumerate(rows):
            writer.writerow([f"r{i}", *row.tolist()] if extra else row.tolist())


def _profile(art: Artifact, tmp_path: Path, data: Path, *more: str) -> subprocess.CompletedProcess[str]:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps(art.inputs))
    cmd = [CLI, "profile", "--model-uri", art.uri, "--sha256", art.sha256, "--method", art.method,
           "--inputs", str(inputs), "--data", str(data), "-o", str(tmp_path / "profile.json"), *more]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_profile_of_a_classifier_prints_the_digest_of_what_it_wrote(
    artifacts: dict[str, Artifact], tmp_path: Path, cache_dir: Path
) -> None:
    art = artifacts["pipe"]
    names = [i["name"] for i in art.inputs]
    rows = np.vstack([art.rows, [[50.0, 3.0, 1.0, 0.2]]])  # the last row is out of the declared range
    _csv(tmp_path / "train.csv", names, rows)
    done = _profile(art, tmp_path, tmp_path / "train.csv")
    assert done.returncode == 0, done.stderr
    written = tmp_path / "profile.json"
    assert done.stdout.strip() == sha256_of(written)
    assert "profiled 150 rows (1 refused by the input contract)" in done.stderr
    data = json.loads(written.read_text())
    assert [f["name"] for f in data["features"]] == names
    for f in data["features"]:
        counts = np.bincount(np.searchsorted(f["edges"], art.rows[:, names.index(f["name"])], side="right"),
                             minlength=len(f["edges"]) + 1)  # fmt: skip
        assert f["proportions"] == pytest.approx((counts / 150).tolist())
    labels, n = np.unique(art.model.predict(art.rows), return_counts=True)
    assert data["prediction"] == {"kind": "class", "classes": [str(c) for c in labels],
                                  "proportions": pytest.approx((n / 150).tolist())}  # fmt: skip
    digest = done.stdout.strip()
    runtime = load_runtime(art.settings(cache_dir, reference_uri=written.as_uri(), reference_sha256=digest))
    assert runtime.profile is not None and runtime.profile.classes == ("0", "1", "2")


def test_profile_of_a_regressor_bins_its_values(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    art = artifacts["porosity"]
    names = [i["name"] for i in art.inputs]
    _csv(tmp_path / "train.csv", names, art.rows, extra=False)
    done = _profile(art, tmp_path, tmp_path / "train.csv", "--bins", "5")
    assert done.returncode == 0, done.stderr
    parsed = profile.parse((tmp_path / "profile.json").read_bytes())
    assert parsed.prediction_bins is not None and parsed.prediction_bins.bins == 5
    assert all(b.bins == 5 for b in parsed.features.values())


def test_a_training_file_without_the_models_features_is_refused_by_name(
    artifacts: dict[str, Artifact], tmp_path: Path
) -> None:
    art = artifacts["porosity"]
    _csv(tmp_path / "train.csv", ["RHOB", "NPHI"], art.rows[:, :2])
    done = _profile(art, tmp_path, tmp_path / "train.csv")
    assert done.returncode == 1
    assert "training data" in done.stderr and "lacks feature column(s) ['GR']" in done.stderr
    _csv(tmp_path / "train.csv", [i["name"] for i in art.inputs], art.rows)
    done = _profile(art, tmp_path, tmp_path / "train.csv", "--bins", "40")
    assert done.returncode == 1 and "bins = 40: must be within [2, 20]" in done.stderr


def test_parquet_training_data_gives_the_same_profile_as_csv(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    art = artifacts["porosity"]
    names = [i["name"] for i in art.inputs]
    _csv(tmp_path / "train.csv", names, art.rows)
    pq.write_table(pa.table({n: art.rows[:, j] for j, n in enumerate(names)}), tmp_path / "train.parquet")
    from_csv = _profile(art, tmp_path, tmp_path / "train.csv")
    from_parquet = _profile(art, tmp_path, tmp_path / "train.parquet")
    assert from_csv.returncode == from_parquet.returncode == 0, from_parquet.stderr
    assert from_csv.stdout == from_parquet.stdout  # the same digest: the same profile
