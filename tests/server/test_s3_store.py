"""s3:// against a real S3-compatible server (moto's, the local cluster's store) that checks signatures.

The artifact download and a batch run's input, parts, reports and `_SUCCESS` go through the same
SigV4 code (`fetch.s3_request`) as in a pod; a wrong secret is refused by the store (403).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from devcluster.s3 import BUCKET, S3Store
from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.runtime import load_runtime
from tests.server.conftest import Artifact, run_cli


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Store]:
    s3 = S3Store(tmp_path_factory.mktemp("s3"))
    s3.start()
    try:
        yield s3
    finally:
        s3.stop()


def test_a_model_artifact_loads_over_s3_and_a_wrong_secret_is_refused(
    store: S3Store, artifacts: dict[str, Artifact], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    art = artifacts["forest"]
    store.client().put_object(Bucket=BUCKET, Key="models/forest/1/model.joblib", Body=art.path.read_bytes())
    for key, value in store.env_keys().items():
        monkeypatch.setenv(key, value)
    uri = f"s3://{BUCKET}/models/forest/1/model.joblib"
    runtime = load_runtime(art.settings(tmp_path / "a", model_uri=uri, s3_endpoint=store.url))
    assert runtime.sha256 == art.sha256
    assert np.array_equal(runtime.predict(art.rows), art.model.predict_proba(art.rows))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(
        LoadRefused, match=r"cannot fetch model artifact s3://modeldeploy/models/forest/1/model.joblib: HTTP 403"
    ):
        load_runtime(art.settings(tmp_path / "b", model_uri=uri, s3_endpoint=store.url))


def test_a_batch_run_reads_parquet_from_s3_and_publishes_its_result_there(
    store: S3Store, artifacts: dict[str, Artifact], tmp_path: Path
) -> None:
    art = artifacts["porosity"]
    names = [i["name"] for i in art.inputs]
    rows = art.rows.copy()
    rows[17, 0] = -999.25  # a null sentinel: one rejected row
    sink = io.BytesIO()
    columns = {"well": [f"w{i}" for i in range(len(rows))]} | {n: rows[:, j] for j, n in enumerate(names)}
    pq.write_table(pa.table(columns), sink, row_group_size=40)
    client = store.client()
    client.put_object(Bucket=BUCKET, Key="in/wells.parquet", Body=sink.getvalue())
    env = art.env(MODELDEPLOY_CACHE_DIR=str(tmp_path / "c"), MODELDEPLOY_S3_ENDPOINT=store.url, **store.env_keys())
    args = ["score", "--input", f"s3://{BUCKET}/in/wells.parquet", "--output", f"s3://{BUCKET}/out/porosity",
            "--shards", "3", "--run-id", "nightly-1", "--allow-rejects"]  # fmt: skip
    for index in range(3):
        result = run_cli(args, env | {"JOB_COMPLETION_INDEX": str(index)})
        assert result.returncode == 0, result.stderr

    def get(key: str) -> bytes:
        body: Any = client.get_object(Bucket=BUCKET, Key=f"out/porosity/{key}")["Body"]
        return bytes(body.read())

    manifest = json.loads(get("_SUCCESS"))
    assert (manifest["run"], manifest["rows"], manifest["scored"], manifest["rejected"]) == ("nightly-1", 200, 199, 1)
    parts = pa.concat_tables([pq.read_table(io.BytesIO(get(p))) for p in manifest["parts"]])
    good = np.delete(np.arange(200), 17)
    assert parts.column("row").to_pylist() == good.tolist()
    assert np.array_equal(parts.column("predict").to_numpy(), art.model.predict(rows[good]))
    rejects = get(manifest["rejects"][0]).decode()
    assert "17,RHOB,-999.25,null_sentinel" in rejects
    bad = run_cli(args, env | {"JOB_COMPLETION_INDEX": "0", "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert bad.returncode == 2 and "HTTP 403" in bad.stderr, bad.stderr
