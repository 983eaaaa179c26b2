"""Benchmark of shadow steps: what mirroring costs users and stable, and what 10,000 pairs tell.

Run: `.venv/bin/python bench/shadow.py [--rate 300] [--seconds 15] [--rounds 3] [--no-readme]`.

Three real `modeldeploy-server` processes on 127.0.0.1 (one worker each, as in a default pod):
stable and an equal canary serving the same iris `Pipeline(StandardScaler, LogisticRegression)`,
and a flipping canary (a 1-nearest-neighbour classifier fitted on the benchmark's rows with stable's
classes, the next class on every tenth row). wrk sends single-row V2 requests cycling through 2,000
rows, each connection pausing `--delay-ms` between requests (the same offered load in both modes,
below saturation), alternating rounds without shadow and with a 25%
shadow to the equal canary; reported: each mode's median req/s, p50 and p99 over the rounds and the
p99 ratio, stable's CPU seconds per 1,000 user
requests in each mode, the share of mirrored requests the canary paired. Then 10,000 requests are
mirrored at 100% to each canary and the operator's own check (`modeldeploy_operator.shadow`, at
confidence 0.95) gives the agreement and its interval. Writes a section of bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from modeldeploy_operator import shadow as check

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hack"))
from devcluster.procs import free_port  # noqa: E402
from modeldeploy_operator.analysis import QueryResult
from modeldeploy_operator.api import AnalysisSpec

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TOKEN = "bench-shadow-token"
INPUTS = [{"name": n, "min": 0, "max": 10} for n in ("sepal_length", "sepal_width", "petal_length", "petal_width")]
BEGIN, END = "<!-- shadow-bench:begin -->", "<!-- shadow-bench:end -->"


class Server:
    def __init__(self, path: Path, revision: str, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        env = {**os.environ, "MODELDEPLOY_MODEL_NAME": "iris", "MODELDEPLOY_MODEL_URI": path.as_uri(),
               "MODELDEPLOY_MODEL_SHA256": digest, "MODELDEPLOY_MODEL_REVISION": revision,
               "MODELDEPLOY_INPUTS": json.dumps(INPUTS), "MODELDEPLOY_PORT": str(self.port),
               "MODELDEPLOY_POD_NAME": f"bench-{revision}", "MODELDEPLOY_SHADOW_TOKEN": TOKEN,
               "MODELDEPLOY_CACHE_DIR": str(work / "cache"), "MODELDEPLOY_LOG_LEVEL": "error"}  # fmt: skip
        log = (work / f"{revision}.log").open("wb")
        self.proc = subprocess.Popen([str(BIN / "modeldeploy-server")], env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{revision} did not turn ready; see {work / (revision + '.log')}")
            time.sleep(0.2)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def configure(stable: Server, canary: Server, percent: float) -> None:
    body = {"targets": [canary.url], "percent": percent, "canaryRevision": "canary", "ttlSeconds": 600}
    r = httpx.post(stable.url + "/shadow/v1/config", json=body, headers={"authorization": f"Bearer {TOKEN}"})
    r.raise_for_status()


def body(row: list[float]) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": row}]}).encode()


def lua(work: Path, bodies: list[bytes], delay_ms: float) -> Path:
    """A wrk script cycling through the rows (the flipping canary answers another class on every tenth)."""
    items = ",\n".join(f"[==[{b.decode()}]==]" for b in bodies)
    script = work / "rows.lua"
    script.write_text(f"bodies = {{\n{items}\n}}\ni = 0\nrequest = function()\n  i = i % #bodies + 1\n"
                      '  return wrk.format("POST", "/v2/models/iris/infer", {["Content-Type"] = "application/json"}, '
                      "bodies[i])\nend\n"
                      f"delay = function()\n  return {delay_ms:g}\nend\n")  # fmt: skip
    return script


def wrk(url: str, script: Path, seconds: float, connections: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    if re.search(r"Non-2xx or 3xx responses: (\d+)", out) or re.search(r"Socket errors", out):
        raise RuntimeError(f"user requests failed:\n{out}")

    def ms(pattern: str) -> float:
        value = re.search(pattern, out, re.M).group(1)  # type: ignore[union-attr]
        unit = re.match(r"([\d.]+)(us|ms|s)", value)
        assert unit is not None, value
        return float(unit.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit.group(2)]

    requests = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"p50": ms(r"^\s+50%\s+(\S+)"), "p99": ms(r"^\s+99%\s+(\S+)"), "requests": requests,
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]  # fmt: skip


def wait_until(predicate: Any, seconds: float = 60) -> None:
    end = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("the canary did not pair every mirrored request in time")
        time.sleep(0.2)


def interval(canary: Server) -> dict[str, float]:
    pairs, agree = canary.metric(check.PAIRS_METRIC), canary.metric(check.AGREEMENTS_METRIC)
    spec = AnalysisSpec(min_agreement=0.5, min_requests=1)
    results = {check.PAIRS: QueryResult(pairs), check.AGREEMENTS: QueryResult(agree), check.ABS_DIFF: QueryResult(0)}
    (rec,) = check.evaluate(spec, {}, results)
    assert rec.lower is not None and rec.upper is not None and rec.value is not None
    return {"pairs": pairs, "agreement": rec.value, "lower": rec.lower, "upper": rec.upper}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--connections", type=int, default=4, help="wrk connections (the same in both modes)")
    parser.add_argument("--delay-ms", type=float, default=10, help="pause of each connection between requests")
    parser.add_argument("--seconds", type=float, default=15, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=10_000)
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shadow-bench-"))
    x, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    rng = np.random.default_rng(0)
    pool = np.round(rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], (2000, 4)), 3)
    labels = model.predict(pool)
    flipped = np.where(np.arange(len(pool)) % 10 == 0, (labels + 1) % 3, labels)
    paths = {"stable": work / "stable.joblib", "flip": work / "flip.joblib"}
    joblib.dump(model, paths["stable"])
    joblib.dump(KNeighborsClassifier(n_neighbors=1).fit(pool, flipped), paths["flip"])
    bodies = [body(r) for r in pool.tolist()]
    servers = {"stable": Server(paths["stable"], "stable", work), "equal": Server(paths["stable"], "equal", work),
               "flip": Server(paths["flip"], "flip", work)}  # fmt: skip
    stable, equal, flip = servers["stable"], servers["equal"], servers["flip"]
    script = lua(work, bodies, args.delay_ms)
    try:
        wrk(stable.url, script, 3, args.connections)  # warm-up
        runs: dict[str, list[dict[str, float]]] = {"none": [], "shadow 25%": []}
        for _ in range(args.rounds):
            for mode, percent in (("none", 0), ("shadow 25%", 25)):
                configure(stable, equal, percent)
                cpu = stable.cpu_seconds()
                run = wrk(stable.url, script, args.seconds, args.connections)
                run["cpu_per_1k"] = (stable.cpu_seconds() - cpu) / run["requests"] * 1000
                runs[mode].append(run)
        configure(stable, equal, 0)
        mirrored = stable.metric("modeldeploy_shadow_mirrored_total")
        wait_until(lambda: equal.metric(check.PAIRS_METRIC) >= mirrored, 30)
        paired_share = equal.metric(check.PAIRS_METRIC) / mirrored
        estimates = {}
        for name, canary in (("equal", equal), ("flip", flip)):
            target = canary.metric(check.PAIRS_METRIC) + args.pairs
            configure(stable, canary, 100)
            while canary.metric(check.PAIRS_METRIC) < target:
                wrk(stable.url, script, 5, args.connections)
            configure(stable, canary, 0)
            estimates[name] = interval(canary)
    finally:
        for s in servers.values():
            s.stop()
    keys = ("p50", "p99", "cpu_per_1k", "rps")
    med = {m: tuple(statistics.median(r[k] for r in rs) for k in keys) for m, rs in runs.items()}
    ratio = med["shadow 25%"][1] / med["none"][1]
    cpu_ratio = med["shadow 25%"][2] / med["none"][2]
    load = os.getloadavg()[0]
    lines = [
        f"Latest run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, `.venv/bin/python bench/shadow.py`, "
        f"wrk -t1 -c{args.connections} with {args.delay_ms:g} ms between a connection's requests (the same offered "
        f"load in both modes, below saturation), {args.rounds} rounds of "
        f"{args.seconds:g} s per mode alternating, one worker per server, all on the same 2 cores, load average "
        f"{load:.1f} from other work.",
        "",
        "| mode | user req/s | p50 ms | p99 ms | stable CPU s per 1,000 user requests |",
        "|---|---|---|---|---|",
        *(f"| {m} | {v[3]:.0f} | {v[0]:.2f} | {v[1]:.2f} | {v[2]:.3f} |" for m, v in med.items()),
        "",
        f"- user p99 with a 25% shadow / without: **{ratio:.3f}** (target <= 1.05); stable CPU per user request "
        f"x{cpu_ratio:.2f}",
        f"- mirrored requests paired by the canary: **{100 * paired_share:.2f}%** of {mirrored:.0f} "
        f"(target >= 99% below saturation)",
    ]
    for name, e in estimates.items():
        half = 100 * (e["upper"] - e["lower"]) / 2
        lines.append(f"- {name} canary after {e['pairs']:.0f} pairs: agreement {e['agreement']:.4f} in "
                     f"[{e['lower']:.4f}, {e['upper']:.4f}] at 0.95 (anytime-valid; half-width {half:.2f} "
                     f"percentage points, target 0.5)")  # fmt: skip
    text = "\n".join(lines)
    print(text)
    if not args.no_readme:
        readme = HERE / "README.md"
        old = readme.read_text()
        section = f"{BEGIN}\n## Shadow steps (`bench/shadow.py`)\n\n{text}\n{END}"
        new = (re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: section, old, flags=re.S)
               if BEGIN in old else old.rstrip("\n") + "\n\n" + section + "\n")  # fmt: skip
        readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
