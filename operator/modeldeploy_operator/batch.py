"""Batch scoring, pure parts: one CronJob per `spec.batch` entry, and `status.batch[]` from its Jobs.

The CronJob's pods run `modeldeploy-server score --shards N` with the stable revision's pod
template: the same image, MODELDEPLOY_MODEL_* settings (artifact URI, digest, format, method,
version, revision) and input contract, taken from the stable revision's Deployment, so a run scores
with exactly what serves. After a promotion or a rollback the stable Deployment changes and the
CronJob is rendered again (`CONFIG_HASH` tells when). Jobs are Indexed with `parallelism` shards;
each shard's exit code 1 (rejected rows) fails the Job at once (podFailurePolicy), other failures
are retried up to `BACKOFF_LIMIT` times. Pods run like the server's (Pod Security `restricted`,
read-only root, /tmp an emptyDir) and without a ServiceAccount token.

Batch pods carry their own labels (`modeldeploy.io/batch-of`), not the server pods' name/revision
labels: the Services and the rollout's readiness counts must never see them.

`summarize` reads a run from its Job's status and the termination messages of its pods (each
shard writes its report there: rows, rejected, revision, outcome, message). Called by the shell
(`handlers`) with the objects `kube` lists; returns the status entry, the Events of a newly finished
run and its outcome for the operator's metric.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modeldeploy_operator import cost
from modeldeploy_operator.api import BatchOutcome, BatchRun, BatchSpec, BatchStatus
from modeldeploy_operator.children import CONTAINER_SECURITY, POD_SECURITY, Owner
from modeldeploy_operator.model import Event

LABEL_OF = "modeldeploy.io/batch-of"
LABEL_ENTRY = "modeldeploy.io/batch"
LABEL_REVISION = "modeldeploy.io/batch-revision"
CONFIG_HASH = "modeldeploy.io/batch-config"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"
CONTAINER = "score"
BACKOFF_LIMIT = 2
HISTORY = 3
NAME_MAX = 52  # a CronJob's name: its Jobs add 11 characters and must stay a 63-character label
EXIT_REJECTED = 1
# server settings that only mean something to a serving pod
SERVING_ONLY = ("MODELDEPLOY_HOST", "MODELDEPLOY_PORT", "MODELDEPLOY_WORKERS", "MODELDEPLOY_POD_NAME")
BATCH_SUCCEEDED, BATCH_FAILED = "BatchSucceeded", "BatchFailed"


def cronjob_name(owner: str, entry: str) -> str:
    full = f"{owner}-{entry}"
    if len(full) <= NAME_MAX:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[: NAME_MAX - 9].rstrip('-')}-{digest}"


def labels(owner: str, entry: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modeldeploy-batch",
        "app.kubernetes.io/instance": owner,
        "app.kubernetes.io/managed-by": "modeldeploy",
        LABEL_OF: owner,
        LABEL_ENTRY: entry,
    }


def _score_container(entry: BatchSpec, server: Mapping[str, Any]) -> dict[str, Any]:
    """The stable server container turned into one shard of a run: same image, settings, credentials."""
    env = [e for e in server.get("env") or [] if e.get("name") not in SERVING_ONLY]
    env.append(
        {
            "name": "MODELDEPLOY_BATCH_RUN",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_NAME_LABEL}']"}},
        }
    )
    # the Job's uid: a Job re-created under an earlier one's name never completes its run with that
    # one's shard reports
    env.append(
        {
            "name": "MODELDEPLOY_BATCH_ATTEMPT",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{JOB_UID_LABEL}']"}},
        }
    )
    args = [
        "score", "--input", entry.input.uri, "--output", entry.output.uri,
        "--shards", str(entry.parallelism), "--run-id", "$(MODELDEPLOY_BATCH_RUN)",
    ]  # fmt: skip
    if entry.allow_rejects:
        args.append("--allow-rejects")
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": server.get("image"),
        "command": ["modeldeploy-server"],
        "args": args,
        "env": env,
        # the shard's report (JSON) reaches the pod's status; a crash before it leaves the log's tail
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    for key in ("envFrom", "resources", "imagePullPolicy"):
        if key in server:
            container[key] = copy.deepcopy(server[key])
    return container


def revision_of_template(template: Mapping[str, Any]) -> str | None:
    for container in (template.get("spec") or {}).get("containers") or []:
        for e in container.get("env") or []:
            if e.get("name") == "MODELDEPLOY_MODEL_REVISION":
                return str(e.get("value"))
    return None


def cronjob(owner: Owner, entry: BatchSpec, stable_template: Mapping[str, Any]) -> dict[str, Any]:
    """The CronJob of one entry, from the stable revision's pod template (as its Deployment has it)."""
    pod = stable_template.get("spec") or {}
    server = next((c for c in pod.get("containers") or [] if c.get("name") == "server"), None)
    if server is None:
        raise ValueError("the stable Deployment's pod template has no container 'server'")
    revision = revision_of_template(stable_template) or ""
    pod_labels = {**labels(owner.name, entry.name), LABEL_REVISION: revision}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [_score_container(entry, server)],
        "automountServiceAccountToken": False,  # a shard never calls the Kubernetes API
        "securityContext": copy.deepcopy(POD_SECURITY),
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if "serviceAccountName" in pod:  # cloud workload identity for the S3 credentials
        pod_spec["serviceAccountName"] = pod["serviceAccountName"]
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": entry.parallelism,
        "parallelism": entry.parallelism,
        "backoffLimit": BACKOFF_LIMIT,
        "activeDeadlineSeconds": entry.active_deadline_seconds,
        # rejected rows are in the data: retrying cannot help, fail the run at once
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_REJECTED]},
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
    }
    spec = {
        "schedule": entry.schedule,
        "suspend": entry.suspend,
        "concurrencyPolicy": "Forbid",  # two runs would race for the same _SUCCESS
        "successfulJobsHistoryLimit": HISTORY,
        "failedJobsHistoryLimit": HISTORY,
        "jobTemplate": {"metadata": {"labels": pod_labels}, "spec": job_spec},
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": cronjob_name(owner.name, entry.name),
            "namespace": owner.namespace,
            "labels": {**labels(owner.name, entry.name), LABEL_REVISION: revision},
            "annotations": {CONFIG_HASH: digest},
            "ownerReferences": [owner.reference()],
        },
        "spec": spec,
    }


# ---- status ----------------------------------------------------------------------------------


@dataclass
class Summary:
    status: BatchStatus
    events: list[Event] = field(default_factory=list)
    outcome: str | None = None  # a run that finished since the last status: its outcome (the metric)


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")


def _seconds(start: str | None, end: str | None) -> float | None:
    a, b = _time(start), _time(end)
    return None if a is None or b is None else (b - a).total_seconds()


def _report(pod: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str, float]:
    """The shard's report from its termination message, the raw message, and the container's seconds."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") != CONTAINER:
            continue
        term = (cs.get("state") or {}).get("terminated") or {}
        message = str(term.get("message") or "").strip()
        seconds = _seconds(term.get("startedAt"), term.get("finishedAt")) or 0.0
        try:
            report = json.loads(message) if message.startswith("{") else None
        except ValueError:
            report = None
        return (report if isinstance(report, dict) else None), message, seconds
    return None, "", 0.0


def _condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return dict(c)
    return None


def _index_key(index: str) -> tuple[int, str]:
    return (int(index), "") if index.isdigit() else (1 << 30, index)


def run_of(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], pod_hour_usd: float) -> BatchRun:
    """One Job as a BatchRun: the latest pod of each shard index says rows, rejected, revision."""
    meta, spec, st = job.get("metadata") or {}, job.get("spec") or {}, job.get("status") or {}
    latest: dict[str, Mapping[str, Any]] = {}
    pod_seconds = 0.0
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or "")):
        index = str(((pod.get("metadata") or {}).get("labels") or {}).get("batch.kubernetes.io/job-completion-index"))
        latest[index] = pod
        pod_seconds += _report(pod)[2]
    # (shard index, report, raw message) by index: a failing shard is named by its index
    reports = sorted(((i, *_report(p)[:2]) for i, p in latest.items()), key=lambda t: _index_key(t[0]))
    done = [r for _, r, _ in reports if r is not None]
    complete, failed = _condition(job, "Complete"), _condition(job, "Failed")
    outcome: BatchOutcome = "Succeeded" if complete else "Failed" if failed else "Running"
    end = st.get("completionTime") or (failed or {}).get("lastTransitionTime")
    reason = None
    if failed:
        bad = next(
            ((i, r.get("message") or r.get("outcome")) for i, r, _ in reports if r and r.get("outcome") != "Succeeded"),
            None,
        )
        raw = next(((i, msg) for i, r, msg in reports if r is None and msg), None)
        said = bad or raw
        reason = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".strip()
        if said:
            reason += f"; shard {said[0]} of {spec.get('completions') or '?'} said: {str(said[1])[:300]}"
    revision = next((str(r["revision"]) for r in done if r.get("revision")), None)
    return BatchRun(
        job=str(meta.get("name") or ""),
        revision=revision or ((meta.get("labels") or {}).get(LABEL_REVISION)),
        version=next((str(r["version"]) for r in done if r.get("version")), None),
        sha256=next((str(r["sha256"]) for r in done if r.get("sha256")), None),
        start_time=st.get("startTime"),
        completion_time=end,
        duration_seconds=_seconds(st.get("startTime"), end),
        rows=sum(int(r.get("rows") or 0) for r in done) if done else None,
        rejected=sum(int(r.get("rejected") or 0) for r in done) if done else None,
        shards=spec.get("completions"),
        shards_succeeded=int(st.get("succeeded") or 0),
        outcome=outcome,
        reason=reason,
        cost_usd=cost.significant(pod_seconds / 3600 * pod_hour_usd) if pod_seconds else None,
    )


def summarize(
    entry: BatchSpec,
    cron: Mapping[str, Any] | None,
    jobs: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    previous: BatchStatus | None,
    prices: cost.Prices,
) -> Summary:
    """The entry's status from its CronJob, Jobs and pods; Events and the outcome of a run that just ended."""
    name = None if cron is None else str(cron["metadata"]["name"])
    status = BatchStatus(
        name=entry.name,
        cron_job=name,
        revision=None if cron is None else (cron["metadata"].get("labels") or {}).get(LABEL_REVISION),
        last_schedule_time=None if cron is None else (cron.get("status") or {}).get("lastScheduleTime"),
        last_run=previous.last_run if previous else None,
    )
    if not jobs:
        return Summary(status)
    job = max(jobs, key=lambda j: (str(j["metadata"].get("creationTimestamp") or ""), str(j["metadata"]["name"])))
    job_name = job["metadata"]["name"]
    mine = [p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get(JOB_NAME_LABEL) == job_name]
    template = ((job.get("spec") or {}).get("template")) or {}
    pod_hour = cost.fleet_of({"spec": {"template": template, "replicas": 1}}).pod_hour_usd(prices)
    run = run_of(job, mine, pod_hour)
    status.last_run = run
    before = previous.last_run if previous else None
    if run.outcome == "Running" or (before is not None and before.job == run.job and before.outcome == run.outcome):
        return Summary(status)
    line = f"batch {entry.name}: run {run.job} of revision {run.revision or '?'}"
    if run.outcome == "Succeeded":
        text = f"{line} scored {run.rows} rows, rejected {run.rejected}, in {run.duration_seconds or 0:.0f} s"
        return Summary(status, [Event("Normal", BATCH_SUCCEEDED, text)], "Succeeded")
    return Summary(status, [Event("Warning", BATCH_FAILED, f"{line} failed: {run.reason}")], "Failed")
