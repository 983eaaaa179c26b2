"""`make demo` (`python -m modeldeploy_demo`): a good model promoted and a bad one rolled back, for real.

The story: a local cluster with its real node (reused when `make cluster-up` already runs one), the
CRD, the operator as a background process (log in .cache/cluster/logs/operator.log; server pods
from the cluster's IMAGE), real wine classifiers in the cluster's model store (MODEL_STORE_DIR,
served to the pods at MODEL_STORE_URL); a `restricted` namespace; v1 deployed and Healthy; steady
traffic through the gateway (Traefik; the HTTPRoute on GATEWAY_NAMESPACE/GATEWAY_NAME; 10% of rows read
0.0 for malic_acid, 5% break the input contract and get 422); v2 walks its canary steps to
promotion with a live line per change; v3 (fails on the zero readings) is rolled back by the
operator by itself. Ends with a per-phase table and the figures (also in
.cache/figures/demo.json) and leaves everything running for kubectl and the CLI.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from devcluster.client import DEFAULT_STATE, Cluster, ClusterError
from modeldeploy_demo import kube as k
from modeldeploy_demo import report
from modeldeploy_demo.workload import Operator, Traffic, publish_models, stop_pid_file, wait_for

REPO = Path(__file__).resolve().parents[2]
NAME, NAMESPACE = "wine", "modeldeploy-demo"
HOST = f"{NAME}.demo.local"
STEPS: list[dict[str, Any]] = [
    {"shadow": {"seconds": 10, "percent": 50}},
    {"setWeight": 20}, {"pause": {"seconds": 5}}, {"setWeight": 50}, {"pause": {"seconds": 5}},
    {"setWeight": 80}, {"pause": {"seconds": 5}},
]  # fmt: skip
ANALYSIS = {"intervalSeconds": 5, "minRequests": 20, "failureLimit": 0, "maxErrorRate": 0.02,
            "maxLatencyP99Seconds": 0.5, "minAgreement": 0.97}  # fmt: skip
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


def fresh_namespace(kubeconfig: Path, state: Path) -> None:
    """Stop the previous demo's operator, release its kopf finalizers, delete and recreate the namespace."""
    stop_pid_file(state / "operator.pid", "modeldeploy-operator")
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
            if st.get("phase") == until and (until != "Healthy" or st.get("stableVersion") == version):
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


def gateway_answers(gateway_url: str) -> bool:
    """One GET of the model's metadata through the gateway answers 200 (the route and its endpoints are in)."""
    try:
        return httpx.get(f"{gateway_url}/v2/models/{NAME}", headers={"Host": HOST}, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


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
    fresh_namespace(kubeconfig, state)
    say("==> training wine classifiers (scikit-learn's load_wine) and publishing them with their sha256")
    store, models = publish_models(c.env)
    for key in ("v1", "v2", "bad"):
        say(f"    {models[key].uri(store)}  sha256 {models[key].sha256[:16]}...")
    log = c.log_dir / "operator.log"
    op = Operator(kubeconfig, c.prometheus_url, log, namespace=NAMESPACE, tick=1.0,
                  scale_down_delay=SCALE_DOWN_DELAY, detach=True, pid_file=state / "operator.pid",
                  image=c.env["IMAGE"]).start()  # fmt: skip
    say(f"==> operator running (pid {op.pid}, log {log}, metrics http://127.0.0.1:{op.metrics_port}/metrics)")

    kube = k.Kube(kubeconfig)

    def mdep(key: str, version: str) -> dict[str, Any]:
        return k.model_deployment(NAME, models[key], store, version, route=NAME, steps=STEPS, analysis=ANALYSIS,
                                  deadline=120)  # fmt: skip

    say(f"\n[1] v1: HTTPRoute {NAME} (host {HOST}) and ModelDeployment {NAME} version 1")
    k.apply(kubeconfig, NAMESPACE, k.http_route(NAME, HOST, k.gateway_ref(c.env)))
    t0 = time.time()
    k.apply(kubeconfig, NAMESPACE, mdep("v1", "1"))
    kube.wait_for_phase(NAMESPACE, NAME, "Healthy", 180)
    say(f"    Healthy after {time.time() - t0:.1f}s")
    routed = time.time()
    wait_for(lambda: gateway_answers(c.gateway_url), 60, "the gateway routing to the stable pods")
    say(f"    the gateway routes to them {time.time() - routed:.1f}s later (Traefik learns the endpoints)")
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
        follow(kube, watch, traffic, t2, "Healthy", "2", 240)
        promoted = time.time()
        say(f"    shadow step: {shadow_agreement(watch, t2)}")
        say(f"    promoted {promoted - t2:.1f}s after the change; old revision scales down in {SCALE_DOWN_DELAY}s")
        traffic.phase = "v2 promoted"
        time.sleep(SCALE_DOWN_DELAY + 3)
        phases += [("v2 canary", t2, promoted), ("v2 promoted", promoted, time.time())]

        say("\n[4] v3 (a bad model: fails on rows whose malic_acid reads 0.0)")
        t3 = time.time()
        traffic.phase = "v3 canary"
        k.apply(kubeconfig, NAMESPACE, mdep("bad", "3"))
        final = follow(kube, watch, traffic, t3, "RolledBack", "3", 180)
        rolled = time.time()
        traffic.phase = "after rollback"
        time.sleep(5)
        phases += [("v3 canary", t3, rolled), ("after rollback", rolled, time.time())]
    finally:
        traffic.stop()
        watch.stop()
    return summary(c, kube, op, traffic, watch, phases, final, t2, promoted, began)


def summary(c: Cluster, kube: k.Kube, op: Operator, traffic: Traffic, watch: k.Watch,
            phases: list[tuple[str, float, float]], final: dict[str, Any], t2: float, promoted: float,
            began: float) -> int:  # fmt: skip
    bad_rev = str(final.get("failedRevision"))
    sel = k.selector(NAMESPACE, NAME, bad_rev, ',code=~"5.."')
    breach = k.first_sample(c.prometheus_url, f"modeldeploy_requests_total{sel}")
    zero = watch.first_weight(0, after=breach) if breach is not None else None
    served = k.served(c.prometheus_url, NAMESPACE, NAME, bad_rev)
    v3 = traffic.stats("v3 canary")
    say(f"    decisive measurement: {final.get('message')}")
    if breach is not None and zero is not None:
        say(f"    first scrape with a 5xx of the canary -> canary weight 0: {zero - breach:.1f}s")
    say(f"    the bad canary answered {served:.0f} requests before rollback ({v3.errors} of them 500)")
    why = report.decisions(kube.events(NAMESPACE), phases)
    rows = [(name, end - start, traffic.stats(name), why[name]) for name, start, end in phases]
    say("\n[5] summary (client side, through the gateway)\n" + report.table(rows))
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
        "demo_total_seconds": round(time.time() - began, 1),
    }
    path = report.write_figures("demo", figures)
    say(f"\n    figures ({path}):")
    for key, value in figures.items():
        say(f"      {key:<40} {value}")
    say(
        f"\nEverything keeps running. Try:\n"
        f"  .venv/bin/kubectl --kubeconfig {c.kubeconfig} get mdep -n {NAMESPACE}\n"
        f"  KUBECONFIG={c.kubeconfig} .venv/bin/modeldeploy status {NAME} -n {NAMESPACE}\n"
        f"  .venv/bin/kubectl --kubeconfig {c.kubeconfig} describe mdep {NAME} -n {NAMESPACE}\n"
        f"  curl -H 'Host: {HOST}' -H 'Content-Type: application/json' {c.gateway_url}/v1/models/{NAME}:predict \\\n"
        f'    -d \'{{"instances": [[13.2, 2.3, 2.4, 19, '
        f"100, 2.3, 2.0, 0.36, 1.6, 5.1, 0.96, 2.6, 750]]}}'\n"
        f"Stop: make demo-down (the operator, then the cluster)."
    )
    ok = final.get("phase") == "RolledBack" and healthy.failed == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
