"""Benchmark: modeldeploy-server vs MLServer 1.7.1 vs KServe 0.21, same models, same load.

`make bench` runs this with the project's venv. It creates (once) a virtual environment per
competitor under ~/.cache/modeldeploy/bench-venvs (never in the repository), trains the models
below, serves each with each server on 127.0.0.1, and drives it with wrk (8 connections,
single-row POSTs, bounded duration). It prints a table (req/s, p50, p99, ratio vs MLServer), the
large-batch throughput (10k-row requests) against in-process `model.predict`, and cold start to
ready, and writes the table into bench/README.md.

Models: iris LogisticRegression, a 100-tree RandomForest, and Pipeline(StandardScaler, the same
forest). Options: --duration SECONDS per run (default 10), --rounds N (default 3; all servers of a
model run side by side and are measured round-robin, the table shows medians), --only NAME[,NAME],
--models NAME[,NAME], --no-readme.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hack"))
from devcluster.procs import free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modeldeploy"
VENVS = CACHE / "bench-venvs"
SKLEARN = __import__("sklearn").__version__
COMPETITORS = {
    # uvloop 0.22+ raises from asyncio.get_event_loop() in MLServer 1.7.1's inference workers: pin the one it ran with
    "mlserver": ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", f"scikit-learn=={SKLEARN}", "uvloop<0.22"],
    "kserve": ["kserve>=0.21,<0.22", f"scikit-learn=={SKLEARN}", "joblib"],
}
IRIS_INPUTS = [{"name": n, "min": 0, "max": 10} for n in ("sepal_length", "sepal_width", "petal_length", "petal_width")]
ROW = [5.9, 3.0, 5.1, 1.8]


def venv(name: str) -> Path:
    """The competitor's venv (created once; pinned versions)."""
    path = VENVS / name
    marker = path / ".bench-installed"
    wanted = " ".join(COMPETITORS[name])
    if not marker.exists() or marker.read_text() != wanted:
        uv = Path(sys.executable).with_name("uv")
        subprocess.run([str(uv), "venv", "--clear", "--python", "python3.11", "-q", str(path)], check=True)
        subprocess.run([str(uv), "pip", "install", "-q", "--python", str(path / "bin" / "python"),
                        *COMPETITORS[name]], check=True)  # fmt: skip
        marker.write_text(wanted)
    return path


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    single_body: bytes
    batch_body: Callable[[np.ndarray], bytes]
    cold_start: float


def _v2_body(x: np.ndarray) -> bytes:
    tensor = {"name": "input-0", "shape": list(x.shape), "datatype": "FP64", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def _v1_body(x: np.ndarray) -> bytes:
    return json.dumps({"instances": x.tolist()}).encode()


def _wait_ready(proc: subprocess.Popen[bytes], ready_url: str, started: float, log: Path) -> float:
    while time.monotonic() - started < 120:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}); log: {log.read_text()[-2000:]}")
        try:
            if httpx.get(ready_url, timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"not ready after 120 s: {ready_url}")


def start(kind: str, model: str, path: Path, sha: str, work: Path, workers: int = 1) -> Server:
    port = free_port()
    log = work / f"{kind}-{model}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELDEPLOY_", "PROMETHEUS_"))}
    if kind.startswith("modeldeploy"):
        env |= {"MODELDEPLOY_MODEL_NAME": model, "MODELDEPLOY_MODEL_URI": path.as_uri(),
                "MODELDEPLOY_MODEL_SHA256": sha, "MODELDEPLOY_INPUTS": json.dumps(IRIS_INPUTS),
                "MODELDEPLOY_PORT": str(port), "MODELDEPLOY_WORKERS": str(workers),
                "MODELDEPLOY_CACHE_DIR": str(work / "cache")}  # fmt: skip
        cmd = [str(Path(sys.executable).with_name("modeldeploy-server"))]
        url, ready, body = (
            f"http://127.0.0.1:{port}/v2/models/{model}/infer",
            f"http://127.0.0.1:{port}/v2/health/ready",
            _v2_body,
        )
    elif kind == "mlserver":
        folder = work / f"mlserver-{model}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        shutil.copy(path, folder / "model.joblib")
        (folder / "model-settings.json").write_text(json.dumps({
            "name": model, "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": "./model.joblib", "version": "v1"}}))  # fmt: skip
        (folder / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
            "metrics_port": free_port()}))  # fmt: skip
        cmd = [str(venv("mlserver") / "bin" / "mlserver"), "start", str(folder)]
        url, ready, body = (
            f"http://127.0.0.1:{port}/v2/models/{model}/infer",
            f"http://127.0.0.1:{port}/v2/health/ready",
            _v2_body,
        )
    else:
        cmd = [str(venv("kserve") / "bin" / "python"), str(HERE / "kserve_sklearn.py"), model, str(path), str(port)]
        url, ready, body = (
            f"http://127.0.0.1:{port}/v1/models/{model}:predict",
            f"http://127.0.0.1:{port}/v1/models/{model}",
            _v1_body,
        )
    started = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=work, start_new_session=True)
    cold = _wait_ready(proc, ready, started, log)
    if kind.startswith("modeldeploy"):  # ready on sklearn at once; the verified fast path follows in the background
        meta = f"http://127.0.0.1:{port}/v2/models/{model}"
        while not httpx.get(meta, timeout=5).json()["parameters"]["compiled"]:
            if time.monotonic() - started > 120:
                raise RuntimeError("fast path not chosen after 120 s")
            time.sleep(0.1)
        time.sleep(1.0)  # the other worker, if any
    single = body(np.array([ROW]))
    check = httpx.post(url, content=single, headers={"content-type": "application/json"}, timeout=30)
    if check.status_code != 200:
        raise RuntimeError(f"{kind} answered {check.status_code}: {check.text[:300]}")
    return Server(kind, proc, url, single, body, cold)


def stop(server: Server) -> None:
    try:
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(server.proc.pid, signal.SIGKILL)


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m|h)$", text)
    if match is None:
        return float("nan")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}[unit]


def wrk(server: Server, duration: int, work: Path) -> dict[str, float]:
    script = work / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = [==[{server.single_body.decode()}]==]\n")  # fmt: skip
    subprocess.run(["wrk", "-t2", "-c8", "-d2s", "-s", str(script), server.url], capture_output=True, check=True)
    out = subprocess.run(["wrk", "-t2", "-c8", f"-d{duration}s", "--latency", "-s", str(script), server.url],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        # the "Latency Distribution" lines (anchored: "87.50%" in the thread stats must not match)
        "p50": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "errors": float(non2xx.group(1)) if non2xx else 0.0,
    }


def batch_rows_per_second(server: Server, x: np.ndarray, repeats: int = 5) -> float:
    body = server.batch_body(x)
    with httpx.Client(timeout=120) as client:
        client.post(server.url, content=body, headers={"content-type": "application/json"})
        started = time.perf_counter()
        for _ in range(repeats):
            response = client.post(server.url, content=body, headers={"content-type": "application/json"})
            assert response.status_code == 200, response.text[:300]
        return len(x) * repeats / (time.perf_counter() - started)


def binary_rows_per_second(server: Server, x: np.ndarray, repeats: int = 5) -> float:
    """10k-row V2 requests with the binary tensor extension (what tritonclient and kserve send by
    default): a JSON header, then the raw FP64 rows; the answer comes back binary too. Sent from a
    raw keep-alive socket: at this size a Python HTTP client's own copying costs more than the server
    (httpx measured a third of the rate of the same requests from a plain socket)."""
    tensor = {"name": "input-0", "shape": list(x.shape), "datatype": "FP64",
              "parameters": {"binary_data_size": x.nbytes}}  # fmt: skip
    header = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    body = header + np.ascontiguousarray(x, dtype="<f8").tobytes()
    url = httpx.URL(server.url)
    request = (f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}\r\n"
               "Content-Type: application/octet-stream\r\n"
               f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection((url.host, url.port or 80), timeout=120) as sock:

        def one() -> None:
            sock.sendall(request + body)
            received = bytearray()
            while b"\r\n\r\n" not in received:
                received += sock.recv(1 << 20)
            head, _, rest = bytes(received).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head[:300]
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))  # fmt: skip
            answer = bytearray(rest)
            while len(answer) < length:
                answer += sock.recv(1 << 20)

        one()
        started = time.perf_counter()
        for _ in range(repeats):
            one()
        return len(x) * repeats / (time.perf_counter() - started)


def in_process_rows_per_second(model: object, x: np.ndarray, repeats: int = 5) -> float:
    model.predict(x)  # type: ignore[attr-defined]
    started = time.perf_counter()
    for _ in range(repeats):
        model.predict(x)  # type: ignore[attr-defined]
    return len(x) * repeats / (time.perf_counter() - started)


def train(work: Path) -> dict[str, tuple[Path, str, object]]:
    x, y = load_iris(return_X_y=True)
    forest = RandomForestClassifier(n_estimators=100, random_state=0)
    models = {"iris-lr": LogisticRegression(max_iter=1000).fit(x, y),
              "iris-rf": RandomForestClassifier(n_estimators=100, random_state=0).fit(x, y),
              "iris-scaler-rf": make_pipeline(StandardScaler(), forest).fit(x, y)}  # fmt: skip
    out = {}
    for name, model in models.items():
        path = work / f"{name}.joblib"
        joblib.dump(model, path)
        out[name] = (path, hashlib.sha256(path.read_bytes()).hexdigest(), model)
    return out


def table(results: list[dict[str, object]], batch: list[dict[str, object]]) -> str:
    lines = ["| Model | Server | req/s | p50 ms | p99 ms | non-2xx | vs MLServer | cold start s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        base = next((b for b in results if b["model"] == r["model"] and b["server"] == "mlserver"), None)
        ratio = f"{r['rps'] / base['rps']:.1f}x" if base else "-"  # type: ignore[operator]
        lines.append(f"| {r['model']} | {r['server']} | {r['rps']:,.0f} | {r['p50']:.2f} | {r['p99']:.2f} | "
                     f"{r['errors']:.0f} | {ratio} | {r['cold']:.2f} |")  # fmt: skip
    lines += ["", "| Model | Server | rows/s (10k-row requests) | in-process model.predict rows/s | share |",
              "|---|---|---:|---:|---:|"]  # fmt: skip
    for b in batch:
        lines.append(f"| {b['model']} | {b['server']} | {b['rows']:,.0f} | {b['inproc']:,.0f} | "
                     f"{b['rows'] / b['inproc']:.0%} |")  # type: ignore[operator]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds; the table shows medians")
    parser.add_argument("--only", default="modeldeploy-1w,modeldeploy-2w,mlserver,kserve")
    parser.add_argument("--models", default="iris-lr,iris-rf,iris-scaler-rf", help="which models to run")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        return 2
    kinds = args.only.split(",")
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="modeldeploy-bench-"))
    wanted = args.models.split(",")
    models = {name: value for name, value in train(work).items() if name in wanted}
    big = np.random.default_rng(0).uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], size=(10_000, 4)).round(2)
    results: list[dict[str, object]] = []
    batch: list[dict[str, object]] = []
    for model, (path, sha, estimator) in models.items():
        inproc = in_process_rows_per_second(estimator, big)
        servers: dict[str, Server] = {}
        try:
            for kind in kinds:  # one at a time, so that cold starts do not overlap
                workers = 2 if kind == "modeldeploy-2w" else 1
                print(f"== {model}: starting {kind}", file=sys.stderr, flush=True)
                name = "modeldeploy" if kind.startswith("modeldeploy") else kind
                servers[kind] = start(name, model, path, sha, work, workers)
            # round-robin rounds, median per server: a load change on the machine hits every server alike
            runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
            for round_no in range(args.rounds):
                for kind in kinds:
                    print(f"== {model}: {kind} round {round_no + 1}", file=sys.stderr, flush=True)
                    runs[kind].append(wrk(servers[kind], args.duration, work))
            for kind in kinds:
                median = {key: float(np.median([r[key] for r in runs[kind]])) for key in runs[kind][0]}
                median["errors"] = sum(r["errors"] for r in runs[kind])
                results.append({"model": model, "server": kind, "cold": servers[kind].cold_start, **median})
                batch.append({"model": model, "server": kind, "rows": batch_rows_per_second(servers[kind], big),
                              "inproc": inproc})  # fmt: skip
                if kind.startswith("modeldeploy"):
                    rows = binary_rows_per_second(servers[kind], big, 20)
                    batch.append({"model": model, "server": f"{kind} binary", "rows": rows, "inproc": inproc})
        finally:
            for server in servers.values():
                stop(server)
    text = table(results, batch)
    print(text)
    (HERE / "results.json").write_text(json.dumps({"results": results, "batch": batch}, indent=1))
    if not args.no_readme:
        readme = HERE / "README.md"
        content = readme.read_text()
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
        head = (f"Latest run: {stamp}, `make bench` (wrk -t2 -c8 -d{args.duration}s, median of {args.rounds} "
                f"round-robin rounds), {os.cpu_count()} cores, {load}.")  # fmt: skip
        block = f"<!-- bench:begin -->\n{head}\n\n{text}\n<!-- bench:end -->"
        content = re.sub(r"<!-- bench:begin -->.*<!-- bench:end -->", lambda _: block, content, flags=re.S)
        readme.write_text(content)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
