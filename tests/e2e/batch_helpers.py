"""What the batch scenarios (test_batch.py, test_batch_lifecycle.py) share: the cluster's S3 store,
the credentials Secret the pods read it with, a Parquet input of wine rows, a `spec.batch` entry,
starting a run from its (suspended) CronJob and waiting for `status.batch[0].lastRun` to finish.
"""

from __future__ import annotations

import io
import json
from typing import Any

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

from modeldeploy_demo import kube as k
from modeldeploy_demo.workload import FEATURES, wait_for
from tests.e2e.conftest import E2E, NAME

SECRET = "s3-creds"
ENTRY = "nightly"
CRONJOB = f"{NAME}-{ENTRY}"


def s3_env(e2e: E2E) -> dict[str, str]:
    env = e2e.cluster.env
    if not env.get("S3_ENDPOINT"):
        pytest.fail("the cluster's env file names no S3 store (S3_ENDPOINT): devcluster.s3 did not start")
    return env


def s3_client(env: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], region_name=env.get("AWS_REGION", "us-east-1"),
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip


def apply_credentials(e2e: E2E, ns: str, env: dict[str, str]) -> None:
    """The Secret `spec.serving.artifactCredentials` names: the pods reach the store in the cluster."""
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, "type": "Opaque",
              "stringData": {"AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                             "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
                             "AWS_REGION": env.get("AWS_REGION", "us-east-1"),
                             "AWS_ENDPOINT_URL": env["S3_ENDPOINT_IN_CLUSTER"]}}  # fmt: skip
    k.apply(e2e.kubeconfig, ns, secret)


def wine_parquet(data: np.ndarray, row_group_size: int) -> bytes:
    """An `id` column (bottle-<row>) and the wine features, as Parquet bytes."""
    n = len(data)
    table = pa.table({"id": [f"bottle-{i}" for i in range(n)]} | {f: data[:, j] for j, f in enumerate(FEATURES)})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=row_group_size)
    return sink.getvalue()


def batch_entry(input_uri: str, output_uri: str, parallelism: int, allow_rejects: bool) -> dict[str, Any]:
    """A suspended entry: its runs are started by the test (`start_run`), not at a minute boundary."""
    return {"name": ENTRY, "schedule": "0 2 * * *", "suspend": True, "parallelism": parallelism,
            "allowRejects": allow_rejects, "input": {"uri": input_uri}, "output": {"uri": output_uri},
            "activeDeadlineSeconds": 600}  # fmt: skip


def serve_with(md: dict[str, Any], e2e: E2E, entry: dict[str, Any]) -> dict[str, Any]:
    """The ModelDeployment `md` with the credentials Secret, the cluster's image and the batch entry."""
    md["spec"]["serving"] = {"artifactCredentials": {"secretName": SECRET}, "image": e2e.cluster.env["IMAGE"]}
    md["spec"]["batch"] = [entry]
    return md


def entry_status(e2e: E2E, ns: str) -> dict[str, Any]:
    return dict((e2e.kube.status(ns, NAME).get("batch") or [{}])[0])


def wait_for_cronjob(e2e: E2E, ns: str, revision: str | None = None, timeout: float = 60) -> dict[str, Any]:
    """status.batch[0] once it names the CronJob (rendered from `revision`, when given)."""

    def ready() -> dict[str, Any] | None:
        st = entry_status(e2e, ns)
        if st.get("cronJob") != CRONJOB or (revision is not None and st.get("revision") != revision):
            return None
        return st

    what = f"the CronJob {CRONJOB} in status.batch" + (f" with revision {revision}" if revision else "")
    return wait_for(ready, timeout, what)


def run_batch(e2e: E2E, ns: str, job: str, timeout: float = 300) -> dict[str, Any]:
    """Start Job `job` from the CronJob (what the schedule would start) and return its finished lastRun."""
    k.kubectl(e2e.kubeconfig, "create", "job", "-n", ns, job, f"--from=cronjob/{CRONJOB}")

    def finished() -> dict[str, Any] | None:
        run = dict(entry_status(e2e, ns).get("lastRun") or {})
        return run if run.get("job") == job and run.get("outcome") in ("Succeeded", "Failed") else None

    return wait_for(finished, timeout, f"the batch run {job} to finish")


def read_json(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The JSON object at `key`, or None when there is none."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return dict(json.loads(body))


def keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    """Every object key under `prefix/`, relative to it, sorted."""
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
        out += [str(o["Key"])[len(prefix) + 1 :] for o in page.get("Contents") or []]
    return sorted(out)


def deploy(e2e: E2E, ns: str, md: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The HTTPRoute and `md` applied in `ns`; (host, status) once Healthy."""
    host = f"{NAME}.{ns}.test"
    k.apply(e2e.kubeconfig, ns, k.http_route(NAME, host, k.gateway_ref(e2e.cluster.env)))
    k.apply(e2e.kubeconfig, ns, md)
    return host, e2e.kube.wait_for_phase(ns, NAME, "Healthy", 180)
