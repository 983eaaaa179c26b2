"""The batch children against the real API server: a ModelDeployment with spec.batch is admitted (and a
bad entry refused naming the field), the rendered CronJob and its Indexed Job pass the API server's
validation (podFailurePolicy, Indexed completions, the restricted pod), and `Kube` applies, observes,
leaves unchanged and prunes CronJobs.
"""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from modeldeploy_demo import kube as h
from modeldeploy_operator import batch
from modeldeploy_operator.api import parse_spec
from modeldeploy_operator.children import Owner, deployment
from modeldeploy_operator.kube import Kube
from modeldeploy_operator.model import Meta
from tests.operator.sim import spec_dict

pytestmark = [pytest.mark.cluster]
REPO = Path(__file__).resolve().parents[2]
ENTRY = {"name": "nightly", "schedule": "0 2 * * *", "input": {"uri": "s3://lake/in.parquet"},
         "output": {"uri": "s3://lake/out"}, "parallelism": 3}  # fmt: skip


def _md(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": spec_dict() | {"batch": [entry]}}  # fmt: skip


def test_the_api_server_admits_the_batch_children_and_kube_applies_and_prunes_them(cluster: Any) -> None:
    kubeconfig = Path(cluster.kubeconfig)
    h.kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds"))
    h.kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/modeldeployments.modeldeploy.io")
    ns = f"batch-{uuid.uuid4().hex[:6]}"
    h.kubectl(kubeconfig, "create", "namespace", ns)
    try:
        with pytest.raises(RuntimeError) as refused:
            h.apply(kubeconfig, ns, _md("bad", ENTRY | {"output": {"uri": "file:///tmp/out"}}))
        assert "spec.batch[0].output.uri" in str(refused.value), refused.value
        h.apply(kubeconfig, ns, _md("iris", ENTRY))
        obj = json.loads(h.kubectl(kubeconfig, "get", "-n", ns, "modeldeployment", "iris", "-o", "json"))
        spec = parse_spec(obj["spec"])
        meta = Meta("iris", ns, obj["metadata"]["uid"], obj["metadata"].get("generation"))
        template = deployment(Owner("iris", ns, meta.uid), spec, "rev1", 1, "modeldeploy:test")["spec"]["template"]
        cron = batch.cronjob(Owner("iris", ns, meta.uid), spec.batch[0], template)
        kube = Kube(config.new_client_from_config(str(kubeconfig)))
        kube.apply_batch(meta, [cron], kube.observe_batch(meta))
        seen = kube.observe_batch(meta)
        assert list(seen.cronjobs) == ["iris-nightly"]
        stored = seen.cronjobs["iris-nightly"]
        assert stored["spec"]["jobTemplate"]["spec"]["completionMode"] == "Indexed"
        version = stored["metadata"]["resourceVersion"]
        kube.apply_batch(meta, [cron], seen)  # unchanged: not written again
        assert kube.observe_batch(meta).cronjobs["iris-nightly"]["metadata"]["resourceVersion"] == version
        # the Job a schedule would create passes the API server's Job validation (podFailurePolicy ...)
        h.kubectl(kubeconfig, "create", "job", "-n", ns, "iris-nightly-manual", "--from=cronjob/iris-nightly")
        job = client.BatchV1Api(kube.batch.api_client).read_namespaced_job("iris-nightly-manual", ns)
        assert job.spec.completion_mode == "Indexed" and job.spec.completions == 3
        assert job.spec.pod_failure_policy.rules[0].action == "FailJob"
        assert [j["metadata"]["name"] for j in kube.observe_batch(meta).jobs] == ["iris-nightly-manual"]
        kube.apply_batch(meta, [], kube.observe_batch(meta))  # the entry removed
        assert kube.observe_batch(meta).cronjobs == {}
    finally:
        h.kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false")


def test_the_cluster_env_names_a_real_s3_store_with_a_bucket(cluster: Any) -> None:
    import boto3

    env = cluster.env
    for key in ("S3_ENDPOINT", "S3_ENDPOINT_IN_CLUSTER", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET"):
        assert env.get(key), key
    keys = {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}
    s3 = boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], region_name=env.get("AWS_REGION", "us-east-1"), **keys)
    s3.put_object(Bucket=env["S3_BUCKET"], Key="probe", Body=b"ok")
    assert s3.get_object(Bucket=env["S3_BUCKET"], Key="probe")["Body"].read() == b"ok"


def test_the_api_server_admits_the_autoscaler_and_its_budget(cluster: Any) -> None:
    from modeldeploy_operator import autoscale

    kubeconfig = Path(cluster.kubeconfig)
    h.kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds"))
    ns = f"hpa-{uuid.uuid4().hex[:6]}"
    h.kubectl(kubeconfig, "create", "namespace", ns)
    try:
        md = _md("iris", ENTRY) | {}
        md["spec"] |= {"autoscaling": {"minReplicas": 2, "maxReplicas": 5, "targetCPUUtilizationPercentage": 60},
                       "serving": {"resources": {"requests": {"cpu": "100m"}}}}  # fmt: skip
        h.apply(kubeconfig, ns, md)
        bad = copy.deepcopy(md)
        bad["metadata"]["name"] = "bad"
        bad["spec"]["serving"] = {}
        with pytest.raises(RuntimeError) as refused:
            h.apply(kubeconfig, ns, bad)
        assert "serving.resources.requests.cpu" in str(refused.value), refused.value
        obj = json.loads(h.kubectl(kubeconfig, "get", "-n", ns, "modeldeployment", "iris", "-o", "json"))
        spec = parse_spec(obj["spec"])
        assert spec.autoscaling is not None
        meta = Meta("iris", ns, obj["metadata"]["uid"])
        owner = Owner("iris", ns, meta.uid)
        kube = Kube(config.new_client_from_config(str(kubeconfig)))
        kube.apply_autoscaling(meta, [autoscale.hpa(owner, spec.autoscaling, "rev1"), autoscale.pdb(owner, "rev1")])
        hpa = json.loads(h.kubectl(kubeconfig, "get", "-n", ns, "hpa", "iris", "-o", "json"))
        assert hpa["spec"]["scaleTargetRef"]["name"] == "iris-rev1" and hpa["spec"]["maxReplicas"] == 5
        h.kubectl(kubeconfig, "get", "-n", ns, "pdb", "iris-stable")
        kube.delete_autoscaling(meta)
        kube.delete_autoscaling(meta)  # gone already: not an error
        assert h.kubectl(kubeconfig, "get", "-n", ns, "hpa,pdb", "-o", "name").strip() == ""
    finally:
        h.kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false")
