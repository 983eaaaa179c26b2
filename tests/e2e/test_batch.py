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
import json
from typing import Any

import boto3
import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modeldeploy_demo import kube as k
from modeldeploy_demo.workload import FEATURES, NULL, rows, wait_for
from tests.e2e.conftest import E2E, NAME

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

NAMESPACES = ["batch"]
N = 2000
BAD = (7, 1234)  # rows with a null sentinel: rejected, reported, not predicted


def _s3(env: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], region_name=env.get("AWS_REGION", "us-east-1"),
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip


def test_a_parquet_file_from_s3_is_scored_in_4_shards_like_the_online_server(e2e: E2E, say: Any) -> None:
    env = e2e.cluster.env
    if not env.get("S3_ENDPOINT"):
        pytest.fail("the cluster's env file names no S3 store (S3_ENDPOINT): devcluster.s3 did not start")
    ns, bucket = e2e.namespaces["batch"], env["S3_BUCKET"]
    s3 = _s3(env)
    prefix = f"e2e/{ns}"
    s3.put_object(Bucket=bucket, Key=f"{prefix}/models/wine-v1.joblib", Body=e2e.store.models["v1"].path.read_bytes())
    data = np.array(rows(N, 0.0, seed=3))
    for i in BAD:
        data[i, 0] = NULL
    table = pa.table({"id": [f"bottle-{i}" for i in range(N)]} | {f: data[:, j] for j, f in enumerate(FEATURES)})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=300)  # 7 row groups: shards cut across them
    s3.put_object(Bucket=bucket, Key=f"{prefix}/in/wine.parquet", Body=sink.getvalue())
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"}, "type": "Opaque",
              "stringData": {"AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                             "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
                             "AWS_REGION": env.get("AWS_REGION", "us-east-1"),
                             "AWS_ENDPOINT_URL": env["S3_ENDPOINT_IN_CLUSTER"]}}  # fmt: skip
    k.apply(e2e.kubeconfig, ns, secret)
    md = e2e.mdep("v1", "1")
    md["spec"]["model"]["uri"] = f"s3://{bucket}/{prefix}/models/wine-v1.joblib"
    md["spec"]["serving"] = {"artifactCredentials": {"secretName": "s3-creds"}, "image": env["IMAGE"]}
    md["spec"]["batch"] = [{
        "name": "nightly", "schedule": "0 2 * * *", "suspend": True, "parallelism": 4, "allowRejects": True,
        "input": {"uri": f"s3://{bucket}/{prefix}/in/wine.parquet"},
        "output": {"uri": f"s3://{bucket}/{prefix}/out"}, "activeDeadlineSeconds": 600,
    }]  # fmt: skip
    host = f"{NAME}.{ns}.test"
    k.apply(e2e.kubeconfig, ns, k.http_route(NAME, host, k.gateway_ref(env)))
    k.apply(e2e.kubeconfig, ns, md)
    st = e2e.kube.wait_for_phase(ns, NAME, "Healthy", 180)
    stable = st["stableRevision"]
    wait_for(lambda: (e2e.kube.status(ns, NAME).get("batch") or [{}])[0].get("cronJob") == "wine-nightly", 60,
             "the CronJob wine-nightly in status.batch")  # fmt: skip
    k.kubectl(e2e.kubeconfig, "create", "job", "-n", ns, "wine-nightly-e2e", "--from=cronjob/wine-nightly")

    def last_run() -> dict[str, Any]:
        entry = (e2e.kube.status(ns, NAME).get("batch") or [{}])[0]
        return dict(entry.get("lastRun") or {})

    wait_for(lambda: last_run().get("outcome") in ("Succeeded", "Failed"), 300, "the batch run to finish")
    run = last_run()
    assert run["outcome"] == "Succeeded", run
    assert (run["job"], run["revision"], run["rows"], run["rejected"], run["shards"]) == (
        "wine-nightly-e2e", stable, N, len(BAD), 4
    ), run  # fmt: skip
    assert "BatchSucceeded" in e2e.reasons(ns)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/out/_SUCCESS")["Body"].read())
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
