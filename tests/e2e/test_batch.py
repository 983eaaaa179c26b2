"""Batch scoring end to end: a spec.batch entry with parallelism 4 scores a Parquet file from the
cluster's S3 store with the stable revision, writes predictions and a rejects report, and shows
rows and rejected in status; the predictions equal the online answers for the same rows.

The model artifact comes from the same S3 store (credentials through a Secret that
spec.serving.artifactCredentials names), so this also proves s3:// for artifacts in a pod. The
entry is suspended and its run started with `kubectl create job --from=cronjob/...` (what the
schedule would start, without waiting for a minute boundary).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modeldeploy_demo.workload import NULL, rows
from tests.e2e.batch_helpers import (
    apply_credentials,
    batch_entry,
    deploy,
    read_json,
    run_batch,
    s3_client,
    s3_env,
    serve_with,
    wait_for_cronjob,
    wine_parquet,
)
from tests.e2e.conftest import E2E, NAME

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAMESPACES = ["batch"]
N = 2000
BAD = (7, 1234)  # rows with a null sentinel: rejected, reported, not predicted


def test_a_parquet_file_from_s3_is_scored_in_4_shards_like_the_online_server(e2e: E2E, say: Any) -> None:
    env = s3_env(e2e)
    ns, bucket = e2e.namespaces["batch"], env["S3_BUCKET"]
    s3 = s3_client(env)
    prefix = f"e2e/{ns}"
    s3.put_object(Bucket=bucket, Key=f"{prefix}/models/wine-v1.joblib", Body=e2e.store.models["v1"].path.read_bytes())
    data = np.array(rows(N, 0.0, seed=3))
    for i in BAD:
        data[i, 0] = NULL
    # 7 row groups: shards cut across them
    s3.put_object(Bucket=bucket, Key=f"{prefix}/in/wine.parquet", Body=wine_parquet(data, row_group_size=300))
    apply_credentials(e2e, ns, env)
    md = e2e.mdep("v1", "1")
    md["spec"]["model"]["uri"] = f"s3://{bucket}/{prefix}/models/wine-v1.joblib"
    entry = batch_entry(f"s3://{bucket}/{prefix}/in/wine.parquet", f"s3://{bucket}/{prefix}/out", 4, True)
    host, st = deploy(e2e, ns, serve_with(md, e2e, entry))
    stable = st["stableRevision"]
    wait_for_cronjob(e2e, ns)
    run = run_batch(e2e, ns, "wine-nightly-e2e")
    assert run["outcome"] == "Succeeded", run
    assert (run["job"], run["revision"], run["rows"], run["rejected"], run["shards"]) == (
        "wine-nightly-e2e", stable, N, len(BAD), 4
    ), run  # fmt: skip
    assert "BatchSucceeded" in e2e.reasons(ns)
    manifest = read_json(s3, bucket, f"{prefix}/out/_SUCCESS")
    assert manifest is not None, f"no s3://{bucket}/{prefix}/out/_SUCCESS after a Succeeded run"
    assert manifest["run"] == "wine-nightly-e2e" and manifest["revision"] == stable and len(manifest["parts"]) == 4
    parts = pa.concat_tables([
        pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=f"{prefix}/out/{p}")["Body"].read()))
        for p in manifest["parts"]
    ])  # fmt: skip
    good = [i for i in range(N) if i not in BAD]
    assert parts.column("row").to_pylist() == good
    assert parts.column("id").to_pylist() == [f"bottle-{i}" for i in good]
    rejected = []
    for r in manifest["rejects"]:
        text = s3.get_object(Bucket=bucket, Key=f"{prefix}/out/{r}")["Body"].read().decode()
        rejected += [(int(row["row"]), row["reason"]) for row in csv.DictReader(io.StringIO(text))]
    assert rejected == [(i, "null_sentinel") for i in BAD]
    answers: list[Any] = []
    for start in range(0, len(good), 200):  # the server takes at most MAX_BATCH_ROWS (256) rows a request
        chunk = data[good[start : start + 200]].tolist()
        online = httpx.post(f"{e2e.cluster.gateway_url}/v1/models/{NAME}:predict", headers={"Host": host},
                            json={"instances": chunk}, timeout=60)  # fmt: skip
        assert online.status_code == 200, online.text
        answers += online.json()["predictions"]
    assert parts.column("predict").to_pylist() == answers
    say(f"batch: {N} rows in 4 shards, {len(BAD)} rejected, {run.get('durationSeconds')} s, ${run.get('costUsd')}")
