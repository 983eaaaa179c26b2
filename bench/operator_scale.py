"""`make bench-operator`: the operator at 10, 100 and 1,000 ModelDeployments, each with a canary in progress.

Real parts: the devcluster control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler), kwok (sigs.k8s.io/kwok, hack/build-kwok.sh) playing one fake node so that the
server pods are Running and Ready without any process, Prometheus (Debian's) scraping
`bench/synthetic_exporter.py`, which exports the server's metric names for every revision the
objects' status names, and `modeldeploy-operator` as a process watching the benchmark's namespace.

Per size N: create N HTTPRoutes and N ModelDeployments (1 replica, steps setWeight 20 then
`pause: {}`, analysis every INTERVAL s), wait until all are Healthy, change every model (a
canary each), wait until every canary carries 20%, then measure a steady window: the operator's
RSS and CPU, the API requests it sent (its own `modeldeploy_operator_api_requests_total`, and the
API server's `apiserver_request_total` for the resources it touches, minus the exporter's LISTs),
ticks and tick lag (`modeldeploy_operator_tick_lag_seconds`). At the largest size one canary is
then made to fail (30% errors from a known instant) and the time until its HTTPRoute weight is 0
is measured. Writes bench/operator_scale.json and the table in bench/README.md (neither with --no-readme).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))

from kubernetes import client, config  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402

from devcluster import controlplane, procs, prometheus  # noqa: E402

GROUP, VERSION, PLURAL = "modeldeploy.io", "v1alpha1", "modeldeployments"
GW = ("gateway.networking.k8s.io", "v1", "httproutes")
NODE = "kwok-node-0"
SHA = "0" * 64
OPERATOR = Path(sys.prefix) / "bin" / "modeldeploy-operator"


def log(msg: str) -> None:
    print(f"[bench-operator {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def kwok_binary() -> Path:
    out = subprocess.run(["bash", str(REPO / "hack" / "build-kwok.sh")], stdout=subprocess.PIPE, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1]) / "kwok"


def md(name: str, version: str, interval: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"s3://bench/{name}/{version}/model.joblib", "sha256": SHA, "version": version},
            "replicas": 1,
            "rollout": {
                "steps": [{"setWeight": 20}, {"pause": {}}],
                "analysis": {"intervalSeconds": interval, "minRequests": 20, "maxErrorRate": 0.02, "failureLimit": 0},
                "progressDeadlineSeconds": 3600,
                "trafficRouting": {"gatewayAPI": {"httpRoute": name}},
            },
        },
    }


def route(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": "bench"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": f"{name}-stable", "port": 80, "weight": 100},
                        {"name": f"{name}-canary", "port": 80, "weight": 0},
                    ]
                }
            ],  # fmt: skip
        },
    }


def node() -> dict[str, Any]:
    capacity = {"cpu": "1000", "memory": "4Ti", "pods": "20000"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": NODE},
        },
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


class Metrics:
    """Parse a Prometheus text exposition into {(name, labels-string): value}."""

    LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")

    def __init__(self, text: str) -> None:
        self.values: dict[tuple[str, str], float] = {}
        for line in text.splitlines():
            got = self.LINE.match(line)
            if got and not line.startswith("#"):
                self.values[(got.group(1), got.group(2) or "")] = float(got.group(3))

    def sum(self, name: str, where: str = "") -> float:
        return sum(v for (n, labels), v in self.values.items() if n == name and where in labels)

    def buckets(self, name: str) -> list[tuple[float, float]]:
        out = []
        for (n, labels), v in self.values.items():
            if n == name + "_bucket":
                le = re.search(r'le="([^"]+)"', labels)
                if le:
                    out.append((float(le.group(1)), v))
        return sorted(out)


def quantile(q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float | None:
    """histogram_quantile over the difference of two cumulative bucket lists (linear in a bucket)."""
    b = dict(before)
    delta = [(le, v - b.get(le, 0.0)) for le, v in after]
    total = delta[-1][1] if delta else 0
    if total <= 0:
        return None
    rank, prev_le, prev_v = q * total, 0.0, 0.0
    for le, v in delta:
        if v >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_v) / max(v - prev_v, 1e-9))
        prev_le, prev_v = le, v
    return prev_le


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.state = REPO / ".cache" / "bench-operator" / str(os.getpid())
        self.state.mkdir(parents=True, exist_ok=True)
        self.cp = controlplane.ControlPlane(self.state, controlplane.binaries_dir())
        self.exporter_port = procs.free_port()
        self.bad_file = self.state / "bad"
        self.children: list[subprocess.Popen[bytes]] = []

    # ---- setup
    def start(self) -> None:
        t0 = time.monotonic()
        self.cp.start()
        self.cp.apply_gateway_crds()
        self.cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
        self.cp.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.modeldeploy.io")
        config.load_kube_config(str(self.cp.kubeconfig))  # type: ignore[no-untyped-call]
        api = client.ApiClient()
        api.configuration.connection_pool_maxsize = 16
        self.core, self.custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        self.core.create_node(node())
        self.children.append(procs.spawn([
            str(kwok_binary()), "--kubeconfig", str(self.cp.kubeconfig),
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            "--node-ip", "198.18.0.1", "--cidr", "198.18.0.0/16", "--node-lease-duration-seconds", "40",
            "--config", str(REPO / "bench" / "kwok-stages.yaml"),
        ], self.state / "logs" / "kwok.log"))  # fmt: skip
        self.children.append(procs.spawn(
            [sys.executable, str(REPO / "bench" / "synthetic_exporter.py"), str(self.cp.kubeconfig),
             str(self.exporter_port), str(self.bad_file)],
            self.state / "logs" / "exporter.log",
        ))  # fmt: skip
        cfg = {
            "global": {"scrape_interval": "2s", "evaluation_interval": "2s", "scrape_timeout": "2s"},
            "scrape_configs": [{
                "job_name": "synthetic", "honor_labels": True,
                "static_configs": [{"targets": [f"127.0.0.1:{self.exporter_port}"]}],
            }],
        }  # fmt: skip
        self.prom = prometheus.Prometheus(self.state, cfg)
        self.prom.start()
        procs.wait_until(self.node_ready, 120, 0.5, "the kwok node Ready")
        log(f"control plane, kwok, exporter and Prometheus up in {time.monotonic() - t0:.0f}s (state {self.state})")

    def node_ready(self) -> bool:
        got = self.core.read_node(NODE)
        return any(c.type == "Ready" and c.status == "True" for c in got.status.conditions or [])

    def stop(self) -> None:
        for proc in self.children:
            procs.stop(proc)
        if hasattr(self, "prom"):
            self.prom.stop()
        self.cp.stop()

    # ---- helpers
    def mds(self, ns: str) -> list[dict[str, Any]]:
        got: Any = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, _request_timeout=60)
        return list(got["items"])

    def wait_all(self, ns: str, n: int, what: str, pred: Any, timeout: float) -> float:
        t0 = time.monotonic()
        while True:
            items = self.mds(ns)
            done = sum(1 for i in items if pred(i.get("status") or {}))
            if done >= n:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                phases: dict[str, int] = {}
                for i in items:
                    p = (i.get("status") or {}).get("phase", "-")
                    phases[p] = phases.get(p, 0) + 1
                raise TimeoutError(f"{what}: {done}/{n} after {timeout:.0f}s; phases {phases}")
            time.sleep(3)

    def apiserver_requests(self) -> dict[str, float]:
        """Non-watch requests the API server counted for the resources the operator touches, by
        "VERB resource/subresource"."""
        text = self.cp._get("/metrics")[1]
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            verb = re.search(r'verb="([^"]*)"', line)
            res = re.search(r'resource="([^"]*)"', line)
            sub = re.search(r'subresource="([^"]*)"', line)
            if verb is None or res is None or verb.group(1) in ("WATCH", "CONNECT"):
                continue
            if res.group(1) in ("modeldeployments", "deployments", "pods", "services", "httproutes", "events"):
                key = f"{verb.group(1)} {res.group(1)}" + (f"/{sub.group(1)}" if sub and sub.group(1) else "")
                out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
        return out

    def exporter_lists(self) -> float:
        return float(procs.http_get(f"http://127.0.0.1:{self.exporter_port}/lists", 5)[1])

    # ---- one size
    def run_size(self, n: int, breach: bool) -> dict[str, Any]:
        a = self.args
        ns = f"scale-{n}"
        self.core.create_namespace({"metadata": {"name": ns}})
        procs.wait_until(lambda: self._has_sa(ns), 60, 0.5, "default ServiceAccount")
        names = [f"m{i:04d}" for i in range(n)]
        t0 = time.monotonic()
        for name in names:
            self.custom.create_namespaced_custom_object(*GW[:2], ns, GW[2], route(name))
            self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, md(name, "1", a.interval))
        log(f"N={n}: {n} HTTPRoutes and ModelDeployments created in {time.monotonic() - t0:.1f}s")
        port = procs.free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.cp.kubeconfig),
            "MODELDEPLOY_OPERATOR_PROMETHEUS_URL": self.prom.url,
            "MODELDEPLOY_OPERATOR_TICK_SECONDS": str(a.tick),
            "MODELDEPLOY_OPERATOR_METRICS_PORT": str(port),
            "MODELDEPLOY_OPERATOR_METRICS_BIND_ADDRESS": "127.0.0.1",
            "MODELDEPLOY_OPERATOR_NAMESPACES": ns,
        }
        op = procs.spawn([str(OPERATOR)], self.state / "logs" / f"operator-{n}.log", env=env)
        self.children.append(op)
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        try:
            timeout = 120 + n * 1.5
            took = self.wait_all(ns, n, "Healthy", lambda s: s.get("phase") == "Healthy", timeout)
            log(f"N={n}: all Healthy {took:.0f}s after the operator started")
            t0 = time.monotonic()
            for name in names:
                self.custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    ns,
                    PLURAL,
                    name,
                    md(name, "2", a.interval),
                )
            took = self.wait_all(
                ns, n, "canary at 20%", lambda s: s.get("canaryWeight") == 20 and s.get("canaryRevision"), timeout
            )
            log(f"N={n}: every canary carries 20% {took:.0f}s after the model change")
            time.sleep(a.warmup)
            result = self.steady(n, op, metrics_url)
            result["n"] = n
            if breach:
                result["breach_to_weight0_seconds"] = self.breach(ns, names[n // 2])
            return result
        finally:
            procs.stop(op, grace=10)
            self.children.remove(op)
            self.core.delete_namespace(ns)

    def _has_sa(self, ns: str) -> bool:
        try:
            self.core.read_namespaced_service_account("default", ns)
            return True
        except ApiException:
            return False

    def steady(self, n: int, op: subprocess.Popen[bytes], metrics_url: str) -> dict[str, Any]:
        a = self.args
        before = Metrics(procs.http_get(metrics_url, 10)[1].decode())
        api0, lists0, t0 = self.apiserver_requests(), self.exporter_lists(), time.monotonic()
        rss_max = 0.0
        while time.monotonic() - t0 < a.window:
            rss_max = max(rss_max, rss_mib(op.pid))
            time.sleep(2)
        after = Metrics(procs.http_get(metrics_url, 10)[1].decode())
        api1, lists1, elapsed = self.apiserver_requests(), self.exporter_lists(), time.monotonic() - t0
        lag = "modeldeploy_operator_tick_lag_seconds"
        lag_b, lag_a = before.buckets(lag), after.buckets(lag)

        def delta(name: str, where: str = "") -> float:
            return after.sum(name, where) - before.sum(name, where)

        ticks = delta(lag + "_count")
        requests = "modeldeploy_operator_api_requests_total"
        own = delta(requests)
        by_verb = {verb: delta(requests, f'verb="{verb}"') for verb in ("GET", "PATCH", "POST", "PUT", "DELETE")}
        cpu = delta("process_cpu_seconds_total")
        by_request = {k: v - api0.get(k, 0.0) for k, v in api1.items() if v - api0.get(k, 0.0) > 0}
        apiserver = sum(by_request.values()) - (lists1 - lists0)
        scheduled = n * elapsed / a.tick
        out = {
            "window_seconds": round(elapsed, 1),
            "rss_mib": round(rss_max, 1),
            "cpu_percent_of_core": round(100 * cpu / elapsed, 1),
            "memory_mib": smaps(op.pid),
            "threads": threads(op.pid),
            "ticks": int(ticks),
            "ticks_per_object_per_period": round(ticks / scheduled, 3),
            "operator_requests_per_object_tick": round(own / max(ticks, 1), 3),
            "operator_requests_by_verb_per_second": {k: round(v / elapsed, 2) for k, v in by_verb.items() if v},
            "apiserver_requests_per_object_tick": round(apiserver / max(ticks, 1), 3),
            "apiserver_requests_per_second": {k: round(v / elapsed, 2) for k, v in sorted(by_request.items())},
            "exporter_lists_per_second": round((lists1 - lists0) / elapsed, 2),
            "tick_lag_p50_seconds": _round(quantile(0.5, lag_b, lag_a)),
            "tick_lag_p99_seconds": _round(quantile(0.99, lag_b, lag_a)),
        }
        log(f"N={n}: {json.dumps(out)}")
        return out

    def breach(self, ns: str, name: str) -> float:
        """Make one canary fail (30% errors) and time it until its HTTPRoute carries 0% to it."""
        t = time.time()
        self.bad_file.write_text(f"{ns}/{name} {t}\n")
        deadline = time.monotonic() + 10 * self.args.interval + 120
        try:
            while time.monotonic() < deadline:
                got: Any = self.custom.get_namespaced_custom_object(*GW[:2], ns, GW[2], name, _request_timeout=10)
                weights = {r["name"]: r.get("weight") for r in got["spec"]["rules"][0]["backendRefs"]}
                if weights.get(f"{name}-canary") == 0:
                    took = time.time() - t
                    log(f"breach of {ns}/{name}: weight 0 after {took:.1f}s")
                    return round(took, 1)
                time.sleep(0.25)
            raise TimeoutError(f"{ns}/{name}: canary weight never went to 0")
        finally:
            self.bad_file.unlink(missing_ok=True)


def smaps(pid: int) -> dict[str, float]:
    """Resident MiB by kind (/proc/PID/smaps_rollup): anonymous (the heap: objects, caches, thread
    stacks) and file-backed (the mapped interpreter, extension modules and shared libraries)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in ("Rss:", "Anonymous:"):
            out[parts[0].rstrip(":").lower()] = int(parts[1]) / 1024
    out["file"] = out.get("rss", 0.0) - out.get("anonymous", 0.0)
    return {k: round(v, 1) for k, v in out.items()}


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def write_readme(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Replace the operator-scale section of bench/README.md with this run's table."""
    path = REPO / "bench" / "README.md"
    start, end = "<!-- operator-scale:start -->", "<!-- operator-scale:end -->"
    load = os.getloadavg()
    rows = [
        "| ModelDeployments | RSS MiB | CPU % of a core | ticks/object/period | API req/object/tick (operator) "
        "| (API server) | tick lag p50 s | p99 s | breach → weight 0 s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r['n']:,} | {r['rss_mib']:.0f} | {r['cpu_percent_of_core']:.0f} | {r['ticks_per_object_per_period']} "
            f"| {r['operator_requests_per_object_tick']} | {r['apiserver_requests_per_object_tick']} "
            f"| {r['tick_lag_p50_seconds']} | {r['tick_lag_p99_seconds']} | {r.get('breach_to_weight0_seconds', '-')} |"
        )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join([
        start,
        f"Run {stamp}, tick {args.tick:g} s, analysis every {args.interval} s, steady window {args.window:g} s, "
        f"load average at the end {load[0]:.1f} (2 cores, shared). Target: RSS <= 300 MiB, <= 0.2 API "
        f"requests/object/tick, tick lag p99 <= {args.tick:g} s, breach -> weight 0 <= "
        f"{args.interval + 2 + 5} s (interval + scrape + 5 s).",
        "",
        *rows,
        end,
    ])  # fmt: skip
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        text = text[: text.index(start)] + body + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n## Operator scale (`make bench-operator`)\n\n" + body + "\n"
    path.write_text(text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10,100,1000", help="comma-separated numbers of ModelDeployments")
    p.add_argument("--tick", type=float, default=5.0)
    p.add_argument("--interval", type=int, default=30, help="analysis intervalSeconds")
    p.add_argument("--warmup", type=float, default=20.0, help="seconds between all canaries at 20% and the window")
    p.add_argument("--window", type=float, default=60.0, help="seconds of the steady-state window")
    p.add_argument("--no-readme", action="store_true",
                   help="print only: write neither bench/README.md nor bench/operator_scale.json")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    bench = Bench(args)
    results = []
    try:
        bench.start()
        for n in sizes:
            results.append(bench.run_size(n, breach=n == max(sizes)))
    finally:
        bench.stop()
    if not args.no_readme:
        out = REPO / "bench" / "operator_scale.json"
        out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2) + "\n")
        write_readme(results, args)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
