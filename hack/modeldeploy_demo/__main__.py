"""`make demo` (`python -m modeldeploy_demo`): a good model promoted and bad ones rolled back, for real.

The story: a local cluster with its real node (reused when `make cluster-up` already runs one), the
CRD, the operator installed by the Helm chart as a pod in modeldeploy-system (release modeldeploy;
its RBAC limited to the demo's namespace; operator and server pods from the cluster's IMAGE), real
wine classifiers in the cluster's model store (MODEL_STORE_DIR, served to the pods at
MODEL_STORE_URL); a `restricted` namespace; v1 deployed and Healthy; steady traffic through the
gateway (Traefik; the HTTPRoute on GATEWAY_NAMESPACE/GATEWAY_NAME; 10% of rows read 0.0 for
malic_acid, 5% break the input contract and get 422); v2 walks its canary steps to promotion with a
live line per change; v3 (fails on the zero readings) and v4 (fast, 200, and wrong: one class for
every wine) are rolled back by the operator by itself. Ends with a per-phase table, the figures
(also in .cache/figures/demo.json), a picture of each rollout (.cache/figures/rollout-v2-promoted.png,
rollout-v3-rolled-back.png, rollout-v4-rolled-back.png: `plot.py`), the cost table of the promoted
model (`modeldeploy cost`) and one batch scoring run of the wine data with the new stable revision
(when the cluster has its S3 store), and leaves everything running for kubectl and the CLI.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from devcluster.client import DEFAULT_STATE, Cluster, ClusterError
from modeldeploy_demo import kube as k
from modeldeploy_demo import plot, report
from modeldeploy_demo.incluster import ChartOperator
from modeldeploy_demo.workload import (
    BIN,
    FEATURES,
    NULL,
    Traffic,
    publish_models,
    routed,
    rows,
    stop_pid_file,
    wait_for,
)
from modeldeploy_operator import compare

REPO = Path(__file__).resolve().parents[2]
NAME, NAMESPACE = "wine", "modeldeploy-demo"
RELEASE, OPERATOR_NAMESPACE = "modeldeploy", "modeldeploy-system"  # the operator: `helm install` of the chart
HOST = f"{NAME}.demo.local"
STEPS: list[dict[str, Any]] = [
    {"shadow": {"seconds": 10, "percent": 50}},
    {"setWeight": 20}, {"pause": {"seconds": 5}}, {"setWeight": 50}, {"pause": {"seconds": 5}},
    {"setWeight": 80}, {"pause": {"seconds": 5}},
]  # fmt: skip
# the absolute checks, the shadow step's agreement, and the canary-against-stable checks of the
# anytime-valid judge (loose enough for a healthy canary to pass within the demo's ~40 req/s: a
# production rollout with more traffic would ask maxErrorRateIncrease 0.01)
ANALYSIS = {"intervalSeconds": 5, "minRequests": 20, "failureLimit": 0, "maxErrorRate": 0.02,
            "maxLatencyP99Seconds": 0.5, "minAgreement": 0.97, "maxErrorRateIncrease": 0.05,
            "maxRefusalRateIncrease": 0.1, "maxPredictionShift": 0.2}  # fmt: skip
# what each server pod asks of the node: what status.cost prices (the default prices of the chart)
RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}}
BATCH_ROWS, BATCH_REJECTS = 2000, (7, 1234)  # rows with a null sentinel: rejected and reported
SCALE_DOWN_DELAY = 10


def say(text: str) -> None:
    print(text, flush=True)


def cluster() -> Cluster:
    try:
        c = Cluster.attach(DEFAULT_STATE)
        say(f"==> reusing the local cluster in {DEFAULT_STATE}")
        return c
    except ClusterError:
        say("==> starting the local cluster (make cluster-down stops it)")
        c = Cluster.start(DEFAULT_STATE, detach=True)
        say(f"    ready in {c.timings.get('all_ready', 0):.1f}s")
        return c


def fresh_namespace(c: Cluster, state: Path) -> None:
    """Remove the previous demo's operator (its Helm release, or the process of a demo from before the
    operator ran as a pod), release its kopf finalizers, delete and recreate the namespace."""
    kubeconfig = c.kubeconfig
    stop_pid_file(state / "operator.pid", "modeldeploy-operator")
    if k.kubectl(kubeconfig, "get", "namespace", OPERATOR_NAMESPACE, "--ignore-not-found", "-o", "name").strip():
        say(f"==> removing the previous demo's operator (release {RELEASE} in {OPERATOR_NAMESPACE})")
        helm = [c.env["HELM"], "--kubeconfig", str(kubeconfig)]
        subprocess.run([*helm, "uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--ignore-not-found", "--wait"],
                       capture_output=True, timeout=180)  # fmt: skip
        k.kubectl(kubeconfig, "delete", "namespace", OPERATOR_NAMESPACE, "--wait=true", "--timeout=120s", timeout=150)
    if k.kubectl(kubeconfig, "get", "namespace", NAMESPACE, "--ignore-not-found", "-o", "name").strip():
        say(f"==> deleting the previous demo's namespace {NAMESPACE}")
        for obj in k.kubectl(kubeconfig, "get", "mdep", "-n", NAMESPACE, "-o", "name").split():
            # no operator runs for this namespace now: its finalizer would hold the deletion forever
            k.kubectl(kubeconfig, "patch", "-n", NAMESPACE, obj, "--type=merge", "-p", k.NO_FINALIZERS)
        k.kubectl(kubeconfig, "delete", "namespace", NAMESPACE, "--wait=true", "--timeout=120s", timeout=150)
    k.create_namespace(kubeconfig, NAMESPACE)


def follow(kube: k.Kube, watch: k.Watch, traffic: Traffic, started: float, until: str, version: str,
           timeout: float) -> dict[str, Any]:  # fmt: skip
    """Print a live line per rollout change (times since `started`) until phase `until` at `version`."""
    printed = 0
    deadline = started + timeout
    while time.time() < deadline:
        for t, st in watch.statuses[printed:]:
            if t >= started - 0.5:
                say(report.live_line(t - started, st, STEPS, len(traffic.select(traffic.phase))))
        printed = len(watch.statuses)
        if printed:
            st = watch.statuses[-1][1]
            key = "stableVersion" if until == "Healthy" else "failedVersion"
            if st.get("phase") == until and st.get(key) == version:
                return st
        time.sleep(0.2)
    raise TimeoutError(f"no {until} within {timeout:.0f}s; status: {kube.status(NAMESPACE, NAME)}")


def shadow_agreement(watch: k.Watch, since: float) -> str:
    """The last agreement the operator measured in the shadow step since `since`."""
    found = [report.check(st, "shadow-agreement") for t, st in watch.statuses if t >= since]
    found = [c for c in found if c]
    if not found:
        return "no agreement measured"
    c = found[-1]
    return f"agreement {report.shadow_text(c)} vs minAgreement 0.97: {c.get('verdict')}"


def s3_secret(env: dict[str, str]) -> dict[str, Any]:
    """The S3 store's credentials for the server pods and the batch shards (envFrom)."""
    data = {
        "AWS_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
        "AWS_REGION": env.get("AWS_REGION", "us-east-1"),
        "AWS_ENDPOINT_URL": env["S3_ENDPOINT_IN_CLUSTER"],
    }
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds"}, "type": "Opaque",
            "stringData": data}  # fmt: skip


def batch_entry(env: dict[str, str]) -> dict[str, Any]:
    """A nightly scoring of the wine rows in S3 (suspended: the demo starts one run by hand)."""
    prefix = f"s3://{env['S3_BUCKET']}/demo"
    return {"name": "nightly", "schedule": "0 2 * * *", "suspend": True, "parallelism": 2, "allowRejects": True,
            "input": {"uri": f"{prefix}/in/wine.csv"}, "output": {"uri": f"{prefix}/out"},
            "activeDeadlineSeconds": 300}  # fmt: skip


def arm_counts(prometheus_url: str) -> plot.Counts:
    """Both arms' 5xx and 422 counts since the canary started, as the operator's judge asks them
    (`compare.RATE_CHECKS`), evaluated at the analysis time."""

    def counts(at: float, window: int, canary: str, stable: str) -> dict[str, dict[str, list[float]]]:
        out: dict[str, dict[str, list[float]]] = {}
        for kind, check in (("errors", compare.ERROR_INCREASE), ("refusals", compare.REFUSAL_INCREASE)):
            _, (_, n_matcher), matcher, _ = compare.RATE_CHECKS[check]
            out[kind] = {}
            for arm, revision in (("canary", canary), ("stable", stable)):
                sel = f'namespace="{NAMESPACE}",model="{NAME}",revision="{revision}"'
                kn = []
                for m in (matcher, n_matcher):
                    q = f"sum(increase({compare.REQUESTS_METRIC}{{{sel},{m}}}[{window}s]))"
                    result = k.prometheus_query(prometheus_url, q, at=at)
                    kn.append(max(0.0, float(result[0]["value"][1])) if result else 0.0)
                out[kind][arm] = [min(kn[0], kn[1]), kn[1]]
        return out

    return counts


def pictures(c: Cluster, kube: k.Kube, watch: k.Watch, rollouts: list[tuple[str, str, str, float, float]]) -> None:
    """[7] One PNG per rollout in .cache/figures/ (and its record as JSON beside it)."""
    say("\n[7] pictures of the rollouts (weight, both arms' rates, answers that changed, decisions)")
    events = kube.events(NAMESPACE)
    for title, name, revision, start, end in rollouts:
        try:
            record = plot.rollout_record(title, revision, start, end + 3, watch.statuses, watch.weights, events,
                                         STEPS, ANALYSIS, arm_counts(c.prometheus_url))  # fmt: skip
            path = plot.draw(record, report.FIGURES / f"{name}.png")
            say(f"    {path} ({len(record['analyses'])} analyses)")
        except Exception as err:  # noqa: BLE001  (a picture never fails the demo)
            say(f"    {name}: no picture ({type(err).__name__}: {err})")


def cost_table(c: Cluster, kube: k.Kube, promoted: float, timeout: float = 90) -> None:
    """Wait for status.cost computed after the promotion (about once a minute), then `modeldeploy cost`."""
    try:
        wait_for(lambda: k.parse_time((kube.status(NAMESPACE, NAME).get("cost") or {}).get("time") or
                                      "1970-01-01T00:00:00Z") >= promoted, timeout,
                 "status.cost computed after the promotion")  # fmt: skip
    except TimeoutError as err:
        say(f"    {err}; the last one:")
    env = {**os.environ, "KUBECONFIG": str(c.kubeconfig)}
    proc = subprocess.run([str(BIN / "modeldeploy"), "cost", NAME, "-n", NAMESPACE], env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    say("    $ modeldeploy cost wine -n modeldeploy-demo")
    say("\n".join("    " + line for line in (proc.stdout + proc.stderr).rstrip().splitlines()))


def batch_run(c: Cluster, kube: k.Kube, stable: str, timeout: float = 240) -> None:
    """[9] One run of spec.batch `nightly` (2,000 wine rows from S3, 2 shards) with the stable revision."""
    import boto3

    say(f"\n[9] batch scoring: {BATCH_ROWS} wine rows (CSV in S3, {len(BATCH_REJECTS)} with a null sentinel), "
        "2 shards, the stable revision's artifact and contract")  # fmt: skip
    env = c.env
    s3 = boto3.client("s3", endpoint_url=env["S3_ENDPOINT"], region_name=env.get("AWS_REGION", "us-east-1"),
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
    data = rows(BATCH_ROWS, 0.0, seed=3)
    for i in BATCH_REJECTS:
        data[i][0] = NULL
    text = io.StringIO()
    text.write(",".join(["id", *FEATURES]) + "\n")
    for i, r in enumerate(data):
        text.write(",".join([f"bottle-{i}", *(repr(v) for v in r)]) + "\n")
    s3.put_object(Bucket=env["S3_BUCKET"], Key="demo/in/wine.csv", Body=text.getvalue().encode())
    job = f"{NAME}-nightly-demo-{int(time.time())}"
    started = time.time()
    try:
        wait_for(lambda: (kube.status(NAMESPACE, NAME).get("batch") or [{}])[0].get("revision") == stable, 60,
                 "the CronJob wine-nightly on the stable revision")  # fmt: skip
        k.kubectl(c.kubeconfig, "create", "job", "-n", NAMESPACE, job, "--from=cronjob/wine-nightly")

        def last_run() -> dict[str, Any]:
            run = dict((kube.status(NAMESPACE, NAME).get("batch") or [{}])[0].get("lastRun") or {})
            return run if run.get("job") == job and run.get("outcome") in ("Succeeded", "Failed") else {}

        run = wait_for(lambda: last_run() or None, timeout, f"the batch run {job}")
    except (TimeoutError, RuntimeError) as err:
        say(f"    no result: {err}")
        return
    say(f"    $ kubectl create job -n {NAMESPACE} {job} --from=cronjob/wine-nightly   "
        f"({time.time() - started:.0f} s to status.batch)")  # fmt: skip
    say(f"    {run.get('outcome')}: {run.get('rows')} rows, {run.get('rejected')} rejected, "
        f"{run.get('shardsSucceeded')}/{run.get('shards')} shards, revision {run.get('revision')} "
        f"(stable {stable}), {run.get('durationSeconds')} s, ${run.get('costUsd')}"
        + (f"; {run.get('reason')}" if run.get("reason") else ""))  # fmt: skip
    say(f"    output: s3://{env['S3_BUCKET']}/demo/out/ (parts, rejects, _SUCCESS)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modeldeploy_demo", description=__doc__)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second through the gateway")
    args = parser.parse_args(argv)
    began = time.time()
    c = cluster()
    kubeconfig = c.kubeconfig
    say("==> installing the CRD; a fresh namespace " + NAMESPACE)
    k.install_crds(kubeconfig, REPO / "crds")
    state = REPO / ".cache" / "demo"
    state.mkdir(parents=True, exist_ok=True)
    fresh_namespace(c, state)
    say("==> training wine classifiers (scikit-learn's load_wine) and publishing them with their sha256")
    store, models = publish_models(c.env)
    for key in ("v1", "v2", "bad", "constant"):
        say(f"    {models[key].uri(store)}  sha256 {models[key].sha256[:16]}...")
    say(f"==> helm install {RELEASE} charts/modeldeploy -n {OPERATOR_NAMESPACE} (the operator as a pod, the chart's "
        f"RBAC for {NAMESPACE} only, the image {c.env['IMAGE']})")  # fmt: skip
    t_op = time.time()
    op = ChartOperator(c.env, c.log_dir / "operator.log", NAMESPACE, tick=1, scale_down_delay=SCALE_DOWN_DELAY,
                       image=c.env["IMAGE"], system_namespace=OPERATOR_NAMESPACE, release=RELEASE).start()  # fmt: skip
    say(f"    pod {op.pod} ready in {time.time() - t_op:.1f}s (metrics {op.url}/metrics; "
        f"kubectl logs -n {OPERATOR_NAMESPACE} {op.pod})")  # fmt: skip

    kube = k.Kube(kubeconfig)
    s3 = bool(c.env.get("S3_ENDPOINT"))
    if s3:
        say(f"==> the Secret s3-creds for the S3 store ({c.env['S3_ENDPOINT_IN_CLUSTER']}): batch output")
        k.apply(kubeconfig, NAMESPACE, s3_secret(c.env))

    def mdep(key: str, version: str) -> dict[str, Any]:
        md = k.model_deployment(NAME, models[key], store, version, route=NAME, steps=STEPS, analysis=ANALYSIS,
                                deadline=120)  # fmt: skip
        md["spec"]["serving"] = {"resources": RESOURCES}
        if s3:
            md["spec"]["serving"]["artifactCredentials"] = {"secretName": "s3-creds"}
            md["spec"]["batch"] = [batch_entry(c.env)]
        return md

    say(f"\n[1] v1: HTTPRoute {NAME} (host {HOST}) and ModelDeployment {NAME} version 1")
    k.apply(kubeconfig, NAMESPACE, k.http_route(NAME, HOST, k.gateway_ref(c.env)))
    t0 = time.time()
    k.apply(kubeconfig, NAMESPACE, mdep("v1", "1"))
    kube.wait_for_phase(NAMESPACE, NAME, "Healthy", 180)
    say(f"    Healthy after {time.time() - t0:.1f}s")
    healthy = time.time()
    wait_for(lambda: routed(c.gateway_url, HOST, NAME), 60, "the gateway routing to the stable pods")
    say(f"    the gateway routes to them {time.time() - healthy:.1f}s later (Traefik learns the endpoints)")
    traffic = Traffic(c.gateway_url, HOST, NAME, rate=args.rate, bad_share=0.1, invalid_share=0.05, phase="v1 steady")
    watch = k.Watch(kube, NAMESPACE, NAME)
    phases: list[tuple[str, float, float]] = []
    try:
        say(f"\n[2] steady traffic through the gateway: ~{args.rate:.0f} req/s, 5% break the input contract (422)")
        traffic.start()
        time.sleep(6)
        s = traffic.stats("v1 steady")
        say(f"    {s.requests} requests: {s.ok} ok, {s.rejected} rejected (422), {s.failed} failed, p99 {s.p99:.3f}s")
        phases.append(("v1 steady", t0, time.time()))

        say("\n[3] v2 (a good model): the canary walks its steps; a line per change")
        t2 = time.time()
        traffic.phase = "v2 canary"
        k.apply(kubeconfig, NAMESPACE, mdep("v2", "2"))
        v2 = follow(kube, watch, traffic, t2, "Healthy", "2", 240)
        promoted = time.time()
        say(f"    shadow step: {shadow_agreement(watch, t2)}")
        say(f"    promoted {promoted - t2:.1f}s after the change; old revision scales down in {SCALE_DOWN_DELAY}s")
        traffic.phase = "v2 promoted"
        time.sleep(SCALE_DOWN_DELAY + 3)
        phases += [("v2 canary", t2, promoted), ("v2 promoted", promoted, time.time())]

        def rolled_back(key: str, version: str, after: str) -> tuple[dict[str, Any], float, float]:
            """Apply a bad version, follow it to RolledBack, keep the traffic going 5 s after."""
            start = time.time()
            traffic.phase = f"v{version} canary"
            k.apply(kubeconfig, NAMESPACE, mdep(key, version))
            st = follow(kube, watch, traffic, start, "RolledBack", version, 180)
            end = time.time()
            traffic.phase = after
            time.sleep(5)
            phases.extend([(f"v{version} canary", start, end), (after, end, time.time())])
            return st, start, end

        say("\n[4] v3 (a bad model: fails on rows whose malic_acid reads 0.0)")
        final, t3, rolled = rolled_back("bad", "3", "after rollback")
        say("\n[5] v4 (fast, answers 200, and wrong: predicts the first class for every wine)")
        wrong, t4, rolled4 = rolled_back("constant", "4", "after v4 rollback")
        say(f"    decision record: {wrong.get('message')}")
    finally:
        traffic.stop()
        watch.stop()
    figures = summary(c, kube, op, traffic, watch, phases, final, t2, promoted)
    wrong_rev = str(wrong.get("failedRevision"))
    figures["demo_wrong_canary_seconds_to_rollback"] = round(rolled4 - t4, 1)
    figures["demo_wrong_canary_user_answers"] = sum(1 for a in traffic.select("v4 canary") if wrong_rev in a.pod)
    figures["demo_seconds_before_pictures_cost_batch"] = round(time.time() - began, 1)
    pictures(c, kube, watch, [("v2 (a good model): promoted", "rollout-v2-promoted", str(v2["stableRevision"]),
                               t2, promoted), ("v3 (fails on malic_acid = 0.0): rolled back", "rollout-v3-rolled-back",
                               str(final.get("failedRevision")), t3, rolled),
                              ("v4 (fast, 200, predicts one class): rolled back", "rollout-v4-rolled-back",
                               str(wrong.get("failedRevision")), t4, rolled4)])  # fmt: skip
    say("\n[8] what a prediction costs (`modeldeploy cost`, status.cost; the stable is v2)")
    try:
        cost_table(c, kube, promoted)
    except Exception as err:  # noqa: BLE001  (the rollouts are the demo's verdict; this is an extra)
        say(f"    no cost table: {type(err).__name__}: {err}")
    if s3:
        try:
            batch_run(c, kube, str(v2["stableRevision"]))
        except Exception as err:  # noqa: BLE001
            say(f"    the batch run failed: {type(err).__name__}: {err}")
    else:
        say("\n[9] batch scoring: skipped, the cluster's env file names no S3 store (S3_ENDPOINT)")
    figures["demo_total_seconds"] = round(time.time() - began, 1)
    path = report.write_figures("demo", figures)
    say(f"\n    figures ({path}):")
    for key, value in figures.items():
        say(f"      {key:<40} {value}")
    say(
        f"\nEverything keeps running. Try:\n"
        f"  .venv/bin/kubectl --kubeconfig {c.kubeconfig} get mdep -n {NAMESPACE}\n"
        f"  KUBECONFIG={c.kubeconfig} .venv/bin/modeldeploy status {NAME} -n {NAMESPACE}\n"
        f"  KUBECONFIG={c.kubeconfig} .venv/bin/modeldeploy cost {NAME} -n {NAMESPACE}\n"
        f"  .venv/bin/kubectl --kubeconfig {c.kubeconfig} describe mdep {NAME} -n {NAMESPACE}\n"
        f"  curl -H 'Host: {HOST}' -H 'Content-Type: application/json' {c.gateway_url}/v1/models/{NAME}:predict \\\n"
        f'    -d \'{{"instances": [[13.2, 2.3, 2.4, 19, '
        f"100, 2.3, 2.0, 0.36, 1.6, 5.1, 0.96, 2.6, 750]]}}'\n"
        f"Stop: make demo-down (the cluster, with the operator pod in it)."
    )
    healthy_failed = figures["demo_failed_requests_healthy_rollout"]
    ok = final.get("phase") == "RolledBack" and wrong.get("phase") == "RolledBack" and healthy_failed == 0
    return 0 if ok else 1


def summary(c: Cluster, kube: k.Kube, op: ChartOperator, traffic: Traffic, watch: k.Watch,
            phases: list[tuple[str, float, float]], final: dict[str, Any], t2: float,
            promoted: float) -> dict[str, Any]:  # fmt: skip
    bad_rev = str(final.get("failedRevision"))
    sel = k.selector(NAMESPACE, NAME, bad_rev, ',code=~"5.."')
    breach = k.first_sample(c.prometheus_url, f"modeldeploy_requests_total{sel}")
    zero = watch.first_weight(0, after=breach) if breach is not None else None
    served = k.served(c.prometheus_url, NAMESPACE, NAME, bad_rev)
    v3 = traffic.stats("v3 canary")
    say(f"    v3's decisive measurement: {final.get('message')}")
    if breach is not None and zero is not None:
        say(f"    first scrape with a 5xx of the canary -> canary weight 0: {zero - breach:.1f}s")
    say(f"    v3 answered {served:.0f} requests before rollback ({v3.errors} of them 500)")
    why = report.decisions(kube.events(NAMESPACE), phases)
    per_phase = [(name, end - start, traffic.stats(name), why[name]) for name, start, end in phases]
    say("\n[6] summary (client side, through the gateway)\n" + report.table(per_phase))
    steps = [(t - t2, w) for t, w in watch.weights if t2 <= t <= promoted]
    usage = op.usage()
    healthy = traffic.stats(since=t2, until=promoted + SCALE_DOWN_DELAY + 3)
    figures = {
        "demo_seconds_to_promotion": round(promoted - t2, 1),
        "demo_weight_changes_seconds": [[round(t, 1), w] for t, w in steps],
        "demo_breach_to_weight0_seconds": round(zero - breach, 1) if breach and zero else None,
        "demo_bad_canary_requests": served,
        "demo_bad_canary_5xx_client": v3.errors,
        "demo_failed_requests_healthy_rollout": healthy.failed,
        "demo_requests_healthy_rollout": healthy.requests,
        "demo_operator_rss_mib": round(usage.rss_mib, 1),
        "demo_operator_peak_rss_mib": round(usage.peak_rss_mib, 1),
        "demo_operator_cpu_seconds": round(usage.cpu_seconds, 1),
        "demo_operator_wall_seconds": round(time.time() - op.started_at, 1),
    }
    return figures


if __name__ == "__main__":
    sys.exit(main())
