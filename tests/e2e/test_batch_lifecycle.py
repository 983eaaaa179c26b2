"""Batch scoring end to end, what happens around a run: a run that fails, and a run after a promotion.

- A run whose input is an unreadable file (a truncated Parquet object on the cluster's S3 store)
  and a run one of whose shards fails (a row the input contract refuses in shard 2's range, without
  allowRejects) each exit non-zero, their Job fails, `status.batch[0].lastRun` and a `BatchFailed`
  Event say why (the file, the shard), and nothing reads as complete: no `runs/<job>/_SUCCESS`, and
  the output's `_SUCCESS` still names the complete run before them.
- After a canary is promoted, the next run scores with the new stable: its `lastRun` and its
  `_SUCCESS` and shard reports name the new revision, version and artifact digest (the run before
  the rollout named v1's).

Both use a suspended entry whose runs are started from the CronJob (`kubectl create job --from`),
the input and output on the cluster's S3 store through the `artifactCredentials` Secret.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from modeldeploy_demo import kube as k
from modeldeploy_demo.workload import NULL, rows, wait_for
from tests.e2e.batch_helpers import (
    CRONJOB,
    apply_credentials,
    batch_entry,
    deploy,
    keys,
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
NAMESPACES = ["failed", "promoted"]
Say = Callable[[str], None]
N = 400
SHARDS = 4
BAD_ROW = 250  # in shard 2's rows [200, 300) of 400 in 4 shards


def _job(e2e: E2E, ns: str, job: str) -> dict[str, Any]:
    return dict(json.loads(k.kubectl(e2e.kubeconfig, "get", "job", "-n", ns, job, "-o", "json")))


def _failed_condition(e2e: E2E, ns: str, job: str) -> dict[str, Any]:
    conditions = (_job(e2e, ns, job).get("status") or {}).get("conditions") or []
    failed = [c for c in conditions if c.get("type") == "Failed" and c.get("status") == "True"]
    assert failed, f"Job {job} has no Failed condition: {conditions}"
    return dict(failed[0])


def _exit_codes(e2e: E2E, ns: str, job: str) -> dict[int, list[int]]:
    """The score container's exit codes of the Job's pods, by shard index."""
    pods = e2e.kube.core.list_namespaced_pod(ns, label_selector=f"batch.kubernetes.io/job-name={job}").items
    out: dict[int, list[int]] = {}
    for pod in pods:
        labels = (pod.metadata.labels if pod.metadata else None) or {}
        index = int(labels["batch.kubernetes.io/job-completion-index"])
        for cs in (pod.status.container_statuses if pod.status else None) or []:
            if cs.state and cs.state.terminated:
                out.setdefault(index, []).append(int(cs.state.terminated.exit_code))
    return out


def _failed_events(e2e: E2E, ns: str, job: str) -> list[str]:
    """The BatchFailed Events about run `job` (posted by the tick that wrote its status, or the next)."""

    def posted() -> list[str]:
        return [e["message"] for e in e2e.kube.events(ns) if e["reason"] == "BatchFailed" and job in e["message"]]

    wait_for(posted, 15, f"a BatchFailed Event about {job}")
    time.sleep(2)  # a second one would be a duplicate: give it the time to show
    return posted()


def test_an_unreadable_input_or_a_failing_shard_fails_the_run_and_nothing_is_complete(e2e: E2E, say: Say) -> None:
    env = s3_env(e2e)
    ns, bucket = e2e.namespaces["failed"], env["S3_BUCKET"]
    s3 = s3_client(env)
    prefix = f"e2e/{ns}"
    key, out = f"{prefix}/in/wine.parquet", f"{prefix}/out"
    uri = f"s3://{bucket}/{key}"
    data = np.array(rows(N, 0.0, seed=5))
    valid = wine_parquet(data, row_group_size=100)
    s3.put_object(Bucket=bucket, Key=key, Body=valid)
    apply_credentials(e2e, ns, env)
    entry = batch_entry(uri, f"s3://{bucket}/{out}", SHARDS, allow_rejects=False)
    deploy(e2e, ns, serve_with(e2e.mdep("v1", "1"), e2e, entry))
    wait_for_cronjob(e2e, ns)

    # a complete run first: the result a failed run must not replace
    ok = run_batch(e2e, ns, "wine-nightly-ok")
    assert (ok["outcome"], ok["rows"], ok["rejected"]) == ("Succeeded", N, 0), ok
    complete = read_json(s3, bucket, f"{out}/_SUCCESS")
    assert complete is not None and complete["run"] == "wine-nightly-ok", complete

    def nothing_complete(job: str) -> list[str]:
        written = keys(s3, bucket, f"{out}/runs/{job}")
        assert "_SUCCESS" not in written, f"the failed run {job} was marked complete: {written}"
        reports = [w for w in written if re.fullmatch(r"report-\d+\.json", w)]  # a shard's success
        assert len(reports) < SHARDS, f"every shard of the failed run {job} reported success: {written}"
        assert read_json(s3, bucket, f"{out}/_SUCCESS") == complete, "the output's _SUCCESS changed after a failed run"
        return written

    # 1. an unreadable file: a Parquet object cut in half (its magic bytes, no footer)
    s3.put_object(Bucket=bucket, Key=key, Body=valid[: len(valid) // 2])
    corrupt = run_batch(e2e, ns, "wine-nightly-corrupt")
    assert corrupt["outcome"] == "Failed", corrupt
    assert _failed_condition(e2e, ns, "wine-nightly-corrupt")["reason"] == "BackoffLimitExceeded"
    corrupt_codes = _exit_codes(e2e, ns, "wine-nightly-corrupt")
    every = [c for cs in corrupt_codes.values() for c in cs]
    assert every and 0 not in every and 2 in every, corrupt_codes  # 2: the input is refused
    said = re.search(rf"shard [0-3] of {SHARDS} said: cannot read input Parquet {re.escape(uri)}: ", corrupt["reason"])
    assert said, f"the reason does not name the unreadable file {uri}: {corrupt['reason']}"
    events = _failed_events(e2e, ns, "wine-nightly-corrupt")
    assert len(events) == 1 and f"cannot read input Parquet {uri}" in events[0], events
    corrupt_written = nothing_complete("wine-nightly-corrupt")

    # 2. a shard that fails: one row of shard 2 breaks the contract and allowRejects is false
    broken = data.copy()
    broken[BAD_ROW, 0] = NULL
    s3.put_object(Bucket=bucket, Key=key, Body=wine_parquet(broken, row_group_size=100))
    shard = run_batch(e2e, ns, "wine-nightly-shard")
    assert shard["outcome"] == "Failed", shard
    assert _failed_condition(e2e, ns, "wine-nightly-shard")["reason"] == "PodFailurePolicy"
    codes = _exit_codes(e2e, ns, "wine-nightly-shard")
    assert codes.get(2) == [1], codes  # failed at once: rejected rows are in the data, a retry cannot help
    assert shard["shardsSucceeded"] < SHARDS, shard
    expected = f"shard 2 of {SHARDS} said: 1 of 100 rows rejected and allowRejects is false; first: row {BAD_ROW}"
    assert expected in shard["reason"], shard["reason"]
    events = _failed_events(e2e, ns, "wine-nightly-shard")
    assert len(events) == 1 and expected in events[0], events
    written = nothing_complete("wine-nightly-shard")
    assert "report-00002.json" not in written and "report-failed-00002.json" in written, written
    assert all(p.startswith("runs/wine-nightly-ok/") for p in complete["parts"]), complete
    say(f"failed runs: corrupt input -> {corrupt['durationSeconds']} s, exit codes {corrupt_codes}; "
        f"{corrupt_written or 'nothing'} written; shard 2 rejecting row {BAD_ROW} -> {shard['durationSeconds']} s, "
        f"{shard['shardsSucceeded']} of {SHARDS} shards succeeded, written {written}; _SUCCESS still names "
        f"{complete['run']} ({complete['rows']} rows); reasons: {corrupt['reason']!r} / "
        f"{shard['reason']!r}")  # fmt: skip


def test_after_a_promotion_the_next_run_scores_with_the_new_stable_revision(e2e: E2E, say: Say) -> None:
    env = s3_env(e2e)
    ns, bucket = e2e.namespaces["promoted"], env["S3_BUCKET"]
    s3 = s3_client(env)
    prefix = f"e2e/{ns}"
    key, out = f"{prefix}/in/wine.parquet", f"{prefix}/out"
    s3.put_object(Bucket=bucket, Key=key, Body=wine_parquet(np.array(rows(N, 0.0, seed=11)), row_group_size=100))
    apply_credentials(e2e, ns, env)
    entry = batch_entry(f"s3://{bucket}/{key}", f"s3://{bucket}/{out}", 2, allow_rejects=False)
    models = e2e.store.models
    host, st = deploy(e2e, ns, serve_with(e2e.mdep("v1", "1"), e2e, entry))
    v1 = st["stableRevision"]
    wait_for_cronjob(e2e, ns, v1)

    def check(job: str, revision: str, version: str) -> dict[str, Any]:
        sha = models[f"v{version}"].sha256
        run = run_batch(e2e, ns, job)
        assert run["outcome"] == "Succeeded", run
        assert (run["revision"], run["version"], run.get("sha256"), run["rows"]) == (revision, version, sha, N), run
        manifest = read_json(s3, bucket, f"{out}/_SUCCESS")
        assert manifest is not None, f"no _SUCCESS after {job}"
        assert (manifest["run"], manifest["revision"], manifest["version"], manifest["sha256"]) == (
            job, revision, version, sha
        ), manifest  # fmt: skip
        for name in manifest["reports"]:
            report = read_json(s3, bucket, f"{out}/{name}")
            assert report is not None and (report["revision"], report["sha256"]) == (revision, sha), report
        return run

    first = check("wine-nightly-v1", v1, "1")

    traffic = e2e.traffic(host, rate=40, bad_share=0.0)
    started = time.time()
    k.apply(e2e.kubeconfig, ns, serve_with(e2e.mdep("v2", "2"), e2e, entry))
    st = e2e.kube.wait_for_phase(ns, NAME, "Healthy", 150, also=lambda s: s.get("stableVersion") == "2")
    promoted = time.time() - started
    traffic.stop()
    v2 = st["stableRevision"]
    assert v2 != v1 and st["history"][-1]["outcome"] == "Promoted", st["history"]
    wait_for_cronjob(e2e, ns, v2, timeout=30)  # status.batch[0].revision: what the next run scores with
    cron = json.loads(k.kubectl(e2e.kubeconfig, "get", "cronjob", "-n", ns, CRONJOB, "-o", "json"))
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    cron_env = {e["name"]: e.get("value") for e in container["env"]}
    assert (cron_env["MODELDEPLOY_MODEL_REVISION"], cron_env["MODELDEPLOY_MODEL_SHA256"]) == (
        v2, models["v2"].sha256
    ), cron_env  # fmt: skip

    second = check("wine-nightly-v2", v2, "2")
    say(f"batch after promotion: run 1 revision {v1} (v1, sha256 {models['v1'].sha256[:12]}) {first['rows']} rows "
        f"in {first['durationSeconds']} s; v2 promoted {promoted:.0f} s after the change; run 2 revision {v2} "
        f"(v2, sha256 {models['v2'].sha256[:12]}) {second['rows']} rows in {second['durationSeconds']} s")  # fmt: skip
