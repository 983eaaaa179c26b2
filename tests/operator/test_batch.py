"""spec.batch in the operator: the CronJob rendered from the stable revision, and status.batch[] from Jobs.

Pure parts (`batch.cronjob`, `batch.summarize`) on the objects the API server returns, then the real
kopf handler ticking against the fake API server (`fake_cluster`): the CronJob follows the stable
revision through a canary and its promotion; a finished run becomes status, one Event and a metric.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from modeldeploy_operator import batch, metrics
from modeldeploy_operator import reasons as r
from modeldeploy_operator.api import BatchStatus, parse_spec
from modeldeploy_operator.children import CONTAINER_SECURITY, POD_SECURITY, Owner, deployment
from modeldeploy_operator.cost import Prices
from tests.operator.fake_cluster import FakeCluster, FakeProm, Operator, sim_now
from tests.operator.sim import Sim, spec_dict

ENTRY = {
    "name": "nightly", "schedule": "0 2 * * *", "input": {"uri": "s3://lake/in.parquet"},
    "output": {"uri": "s3://lake/out"}, "parallelism": 4, "activeDeadlineSeconds": 900,
}  # fmt: skip
OWNER = Owner("iris", "ml", "uid-1")
PRICES = Prices(cpu_core_hour_usd=0.04, memory_gib_hour_usd=0.005, managed_per_1k_usd=0.4)


def _spec(version: str = "1", **extra: Any) -> Any:
    raw = spec_dict(version) | {"batch": [ENTRY | extra]}
    raw["serving"] = {"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                      "artifactCredentials": {"secretName": "s3-creds"}}  # fmt: skip
    return parse_spec(raw)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_the_cronjob_runs_the_stable_revisions_exact_settings_as_an_indexed_job() -> None:
    stable = deployment(OWNER, _spec("1"), "rev1", 2, "modeldeploy:1")
    cron = batch.cronjob(OWNER, _spec("2").batch[0], stable["spec"]["template"])  # the spec moved on: v2
    job = cron["spec"]["jobTemplate"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 4, 4)
    assert job["activeDeadlineSeconds"] == 900 and cron["spec"]["schedule"] == "0 2 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    server = stable["spec"]["template"]["spec"]["containers"][0]
    env, server_env = _env(container), _env(server)
    for key in ("MODELDEPLOY_MODEL_URI", "MODELDEPLOY_MODEL_SHA256", "MODELDEPLOY_MODEL_FORMAT",
                "MODELDEPLOY_MODEL_METHOD", "MODELDEPLOY_MODEL_VERSION", "MODELDEPLOY_MODEL_REVISION",
                "MODELDEPLOY_INPUTS"):  # fmt: skip
        assert env[key] == server_env[key], key
    assert "/1/" in env["MODELDEPLOY_MODEL_URI"] and env["MODELDEPLOY_MODEL_REVISION"] == "rev1"
    assert not {"MODELDEPLOY_HOST", "MODELDEPLOY_PORT", "MODELDEPLOY_POD_NAME"} & env.keys()
    assert env["MODELDEPLOY_BATCH_RUN"] == {
        "fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}
    }
    assert env["MODELDEPLOY_BATCH_ATTEMPT"] == {  # a Job re-created under the same name is another attempt
        "fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/controller-uid']"}
    }
    assert container["args"] == ["score", "--input", "s3://lake/in.parquet", "--output", "s3://lake/out",
                                 "--shards", "4", "--run-id", "$(MODELDEPLOY_BATCH_RUN)"]  # fmt: skip
    assert container["image"] == "modeldeploy:1" and container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {}}
    assert container["securityContext"] == CONTAINER_SECURITY and pod["securityContext"] == POD_SECURITY
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert "ports" not in container and "readinessProbe" not in container
    # batch pods are not server pods: no Service and no readiness count may select them
    labels = job["template"]["metadata"]["labels"]
    assert "modeldeploy.io/name" not in labels and "modeldeploy.io/revision" not in labels
    assert labels[batch.LABEL_REVISION] == "rev1" and labels[batch.LABEL_OF] == "iris"
    rules = job["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [1]
    allow = batch.cronjob(OWNER, _spec("1", allowRejects=True).batch[0], stable["spec"]["template"])
    assert allow["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "--allow-rejects"


def test_cronjob_names_stay_within_52_characters_and_distinct() -> None:
    long_owner = "m" * 52
    a, b = batch.cronjob_name(long_owner, "nightly"), batch.cronjob_name(long_owner, "hourly")
    assert len(a) <= 52 and len(b) <= 52 and a != b
    assert batch.cronjob_name("iris", "nightly") == "iris-nightly"


def _pod(job: str, index: int, report: dict[str, Any] | str, seconds: int = 30, created: str = "00") -> dict[str, Any]:
    message = report if isinstance(report, str) else json.dumps(report)
    return {
        "metadata": {"name": f"{job}-{index}-x{created}", "creationTimestamp": f"2026-12-01T02:00:{created}Z",
                     "labels": {"batch.kubernetes.io/job-name": job,
                                "batch.kubernetes.io/job-completion-index": str(index)}},
        "status": {"containerStatuses": [{"name": "score", "state": {"terminated": {
            "exitCode": 0, "message": message, "startedAt": "2026-12-01T02:00:05Z",
            "finishedAt": f"2026-12-01T02:00:{5 + seconds:02d}Z"}}}]},
    }  # fmt: skip


def _job(name: str, condition: str, reason: str = "", message: str = "") -> dict[str, Any]:
    template = {"spec": {"containers": [{"name": "score", "resources": {"requests": {"cpu": "1", "memory": "2Gi"}}}]}}
    ended = {"type": condition, "status": "True", "reason": reason, "message": message,
             "lastTransitionTime": "2026-12-01T02:01:10Z"}  # fmt: skip
    succeeded = 4 if condition == "Complete" else 3
    status: dict[str, Any] = {"startTime": "2026-12-01T02:00:00Z", "succeeded": succeeded, "conditions": [ended]}
    if condition == "Complete":
        status["completionTime"] = "2026-12-01T02:01:00Z"
    return {"metadata": {"name": name, "creationTimestamp": "2026-12-01T02:00:00Z",
                         "labels": {batch.LABEL_REVISION: "rev1", batch.LABEL_ENTRY: "nightly"}},
            "spec": {"completions": 4, "template": template}, "status": status}  # fmt: skip


def _report(rows: int, rejected: int, outcome: str = "Succeeded", **extra: Any) -> dict[str, Any]:
    return {"revision": "rev1", "version": "1", "rows": rows, "rejected": rejected, "outcome": outcome} | extra


def test_a_finished_run_is_summed_from_the_shards_reports_once() -> None:
    entry = _spec().batch[0]
    cron = {"metadata": {"name": "iris-nightly", "labels": {batch.LABEL_REVISION: "rev1"}},
            "status": {"lastScheduleTime": "2026-12-01T02:00:00Z"}}  # fmt: skip
    job = _job("iris-nightly-29400120", "Complete")
    pods = [_pod(job["metadata"]["name"], i, _report(250, i)) for i in range(4)]
    pods.append(_pod(job["metadata"]["name"], 2, "OOMKilled", created="01"))  # an earlier failed try of shard 2
    pods[-1]["metadata"]["creationTimestamp"] = "2026-12-01T01:59:59Z"
    first = batch.summarize(entry, cron, [job], pods, None, PRICES)
    run = first.status.last_run
    assert run is not None and (run.outcome, run.rows, run.rejected, run.revision) == ("Succeeded", 1000, 6, "rev1")
    assert run.duration_seconds == 60 and first.status.last_schedule_time == "2026-12-01T02:00:00Z"
    # 5 containers x 30 s at (1 core x 0.04 + 2 GiB x 0.005) USD/h
    assert run.cost_usd == pytest.approx(150 / 3600 * 0.05, rel=1e-5)
    assert [e.reason for e in first.events] == [batch.BATCH_SUCCEEDED] and first.outcome == "Succeeded"
    assert "scored 1000 rows, rejected 6" in first.events[0].message
    again = batch.summarize(entry, cron, [job], pods, first.status, PRICES)
    assert again.events == [] and again.outcome is None  # the same run is reported once


def test_a_failed_run_names_the_jobs_reason_and_the_shards_message() -> None:
    entry = _spec().batch[0]
    job = _job(
        "iris-nightly-29400180", "Failed", "PodFailurePolicy", "Container score for pod ml/x failed with exit code 1"
    )
    bad = _report(250, 3, "Rejected", message="3 of 250 rows rejected and allowRejects is false")
    pods = [_pod(job["metadata"]["name"], i, _report(250, 0)) for i in range(3)]
    pods.append(_pod(job["metadata"]["name"], 3, bad))
    previous = BatchStatus(name="nightly")
    out = batch.summarize(entry, None, [job], pods, previous, PRICES)
    run = out.status.last_run
    assert run is not None and run.outcome == "Failed" and run.rows == 1000 and run.rejected == 3
    assert run.reason is not None and run.reason.startswith("PodFailurePolicy: Container score")
    assert "shard 3 of 4 said: 3 of 250 rows rejected and allowRejects is false" in run.reason
    assert [e.reason for e in out.events] == [batch.BATCH_FAILED] and out.events[0].type == "Warning"
    crashed = [_pod(job["metadata"]["name"], 0, "Traceback ...\nMemoryError")]
    out = batch.summarize(entry, None, [job], crashed, previous, PRICES)
    assert out.status.last_run is not None and "shard 0 of 4 said: Traceback ...\nMemoryError" in (
        out.status.last_run.reason or ""
    )



def test_a_failed_runs_reason_names_the_failing_shards_index() -> None:
    """Shards 0-1 scored, shard 2 refused its input, shard 3 was killed when the Job failed (its
    log's tail is its message): the reason names shard 2 and what it said, whichever pod is listed
    first."""
    entry = _spec().batch[0]
    job = _job("iris-nightly-29400240", "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    name = job["metadata"]["name"]
    refused = "cannot read input Parquet s3://lake/in.parquet: Parquet magic bytes not found in footer"
    pods = [_pod(name, 3, "Terminated"), *(_pod(name, i, _report(250, 0)) for i in range(2))]
    pods.append(_pod(name, 2, _report(0, 0, "Failed", message=refused)))
    run = batch.summarize(entry, None, [job], pods, BatchStatus(name="nightly"), PRICES).status.last_run
    assert run is not None and run.reason is not None
    assert run.reason.endswith(f"; shard 2 of 4 said: {refused}"), run.reason


def test_a_run_names_the_artifact_digest_its_shards_scored_with() -> None:
    entry = _spec().batch[0]
    job = _job("iris-nightly-29400300", "Complete")
    digest = "ab" * 32
    pods = [_pod(job["metadata"]["name"], i, _report(250, 0, sha256=digest)) for i in range(4)]
    run = batch.summarize(entry, None, [job], pods, None, PRICES).status.last_run
    assert run is not None and (run.revision, run.version, run.sha256) == ("rev1", "1", digest)
    assert run.model_dump(by_alias=True, exclude_none=True)["sha256"] == digest

def test_the_cronjob_follows_the_stable_revision_through_a_canary_and_its_promotion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = spec_dict(steps=[{"setWeight": 50}, {"pause": {}}]) | {"batch": [ENTRY]}
    sim = Sim(raw, now=sim_now(), ready_after=0)
    sim.run(10, until=lambda s: s.phase() == r.PHASE_HEALTHY)
    v1 = sim.status.stable_revision
    world = FakeCluster(sim)
    op = Operator(world, FakeProm(), monkeypatch)
    op.tick()

    def rendered() -> tuple[str, str]:
        cron = world.batch.cronjobs["iris-nightly"]
        env = _env(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0])
        return cron["metadata"]["labels"][batch.LABEL_REVISION], env["MODELDEPLOY_MODEL_URI"]

    assert rendered() == (v1, "http://127.0.0.1:9/iris/1/model.joblib")
    op.tick()  # the CronJob applied last tick is observed now
    assert world.status["batch"] == [{"name": "nightly", "cronJob": "iris-nightly", "revision": v1}]
    world.set_version("2")
    for _ in range(8):
        op.tick()
    v2 = world.status.get("canaryRevision")
    assert v2 and v2 != v1 and world.status.get("canaryWeight") == 50
    assert rendered() == (v1, "http://127.0.0.1:9/iris/1/model.joblib")  # a canary does not score batches
    world.annotate(r.ANNOTATION_PROMOTE, "2026-12-01T00:00:00Z")
    for _ in range(6):
        op.tick()
    assert world.status.get("stableRevision") == v2
    assert rendered() == (v2, "http://127.0.0.1:9/iris/2/model.joblib")  # the next run uses the new stable
    # a run finishes: status, one Event, the metric
    job = _job("iris-nightly-1", "Complete")
    world.batch.jobs = [job]
    world.batch.pods = [_pod("iris-nightly-1", i, _report(10, 0) | {"revision": v2}) for i in range(4)]
    before = metrics.BATCH_RUNS.labels(namespace="ml", name="iris", outcome="Succeeded")._value.get()
    for _ in range(3):
        op.tick()
    last = world.status["batch"][0]["lastRun"]
    assert (last["job"], last["revision"], last["rows"], last["outcome"]) == ("iris-nightly-1", v2, 40, "Succeeded")
    assert op.reasons().count(batch.BATCH_SUCCEEDED) == 1
    assert metrics.BATCH_RUNS.labels(namespace="ml", name="iris", outcome="Succeeded")._value.get() == before + 1
    # the entry removed: its CronJob goes, and so does its status
    world.obj["spec"]["batch"] = []
    op.tick()
    assert world.batch.cronjobs == {} and world.status["batch"] == []
