"""Graceful behaviour: SIGTERM drains in-flight requests; structured JSON logs carry the request id."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import joblib

from tests.server.conftest import REPO_ROOT, Artifact, free_port, raw_request, sha256_of, start_cli, wait_ready
from tests.server.slow_model import SlowModel


def start_slow(tmp_path: Path, seconds: float, trigger: float = 1.0) -> tuple[subprocess.Popen[bytes], str, Path, Path]:
    """A server of SlowModel(seconds) (rows whose first feature is `trigger` are slow), with access logs:
    its process, URL, log file and the marker file a slow request creates once it is inside the model."""
    path = tmp_path / "slow.joblib"
    inside = tmp_path / "inside"
    joblib.dump(SlowModel(seconds, marker=str(inside), trigger=trigger), path)
    port = free_port()
    env = {"MODELDEPLOY_MODEL_URI": path.as_uri(), "MODELDEPLOY_MODEL_SHA256": sha256_of(path),
           "MODELDEPLOY_MODEL_NAME": "slow", "MODELDEPLOY_PORT": str(port), "MODELDEPLOY_COMPILE": "off",
           "MODELDEPLOY_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO_ROOT),
           "MODELDEPLOY_ACCESS_LOG": "true"}  # fmt: skip
    log = tmp_path / "server.log"
    return start_cli(env, log), f"http://127.0.0.1:{port}", log, inside


def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    proc, url, log, inside = start_slow(tmp_path, 1.5)
    try:
        wait_ready(url, proc)
        results: list[httpx.Response] = []
        request = threading.Thread(target=lambda: results.append(httpx.post(
            f"{url}/v1/models/slow:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=30,
            headers={"x-request-id": "drain-me"})))  # fmt: skip
        request.start()
        # SIGTERM only once the request is inside the model (a fixed sleep lost the race on a loaded machine:
        # the signal came first, the request was refused and nothing was left to drain)
        deadline = time.monotonic() + 20
        while not inside.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert inside.exists(), "the request never reached the model"
        proc.send_signal(signal.SIGTERM)
        request.join(timeout=30)
        assert results and results[0].status_code == 200 and results[0].json() == {"predictions": [0]}
        # a requested stop that drained cleanly exits 0 (uvicorn alone re-raises SIGTERM: exit 143)
        assert proc.wait(timeout=30) == 0
        assert "Finished server process" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("request_id") == "drain-me"]
    assert access and access[0]["status"] == 200 and access[0]["path"] == "/v1/models/slow:predict"
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)


def test_probes_and_metrics_answer_while_a_long_prediction_runs(tmp_path: Path) -> None:
    """A slow model's calls must not hold the probes: the kubelet's readiness probe (timeout
    PROBE_TIMEOUT_SECONDS, 5) would time out and take a busy, healthy pod out of its Service. Twice:
    the first call (not yet timed) and one after the model has shown it is slow."""
    proc, url, _, inside = start_slow(tmp_path, 4.0)
    try:
        wait_ready(url, proc)
        for _ in range(2):
            inside.unlink(missing_ok=True)
            results: list[httpx.Response] = []
            request = threading.Thread(target=lambda answers=results: answers.append(httpx.post(
                f"{url}/v1/models/slow:predict", json={"instances": [[1, 2, 3, 4]]}, timeout=30)))  # fmt: skip
            request.start()
            deadline = time.monotonic() + 20
            while not inside.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            assert inside.exists(), "the request never reached the model"
            for probe in ("/v2/health/ready", "/v2/health/live", "/metrics"):
                assert httpx.get(f"{url}{probe}", timeout=2).status_code == 200, probe
            assert not results, "the probes were answered only after the long prediction"
            request.join(timeout=30)
            assert results and results[0].status_code == 200 and results[0].json() == {"predictions": [0]}
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_the_event_loop_never_waits_for_the_model_while_it_loads_and_switches_path(tmp_path: Path) -> None:
    """Handing a loaded model to the data plane works out its answers' type from one call of the
    artifact's own method on the reference row. On the event loop, that call held every probe and
    request for as long as the model takes: once when the model turned ready, and again when the
    serving path was switched in, while traffic flows. Here every call on the reference row takes
    2 s; the liveness probe must answer in well under that throughout (the kubelet's timeout is 5 s,
    and a model can be slower than that)."""
    seconds = 2.0
    proc, url, log, _ = start_slow(tmp_path, seconds, trigger=0.0)  # the reference row is zeros: all slow
    waits: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while "serving path chosen" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            t0 = time.monotonic()
            try:
                httpx.get(f"{url}/v2/health/live", timeout=30)
            except httpx.TransportError:  # not listening yet
                time.sleep(0.05)
                continue
            waits.append(time.monotonic() - t0)
            time.sleep(0.05)
        assert "serving path chosen" in log.read_text(), log.read_text()[-2000:]
        assert httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert len(waits) > 20, waits
    assert max(waits) < seconds / 2, f"a liveness probe waited {max(waits):.2f} s for the model ({len(waits)} probes)"


def _post_on(sock: socket.socket, body: bytes) -> bytes:
    """One HTTP/1.1 request on an open connection; the status line of its answer."""
    sock.sendall(raw_request("/v1/models/pipe:predict", body))
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection instead of answering (got {answer!r})"
        answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    while len(rest) < length:
        rest += sock.recv(65536)
    return head.split(b"\r\n")[0]


def test_an_idle_keep_alive_connection_outlives_a_gateway_pause_and_not_a_stop(
    artifacts: dict[str, Artifact], tmp_path: Path
) -> None:
    """A gateway keeps idle connections to the pod (Traefik: 90 s) and reuses them. A server that closes
    one first (uvicorn's 5 s) races the gateway's next request on it, which the gateway answers 502.
    The server keeps an idle connection open past 5 s; a SIGTERM still closes it at once."""
    port = free_port()
    env = artifacts["pipe"].env(MODELDEPLOY_PORT=str(port), MODELDEPLOY_CACHE_DIR=str(tmp_path / "cache"),
                                MODELDEPLOY_GRACEFUL_TIMEOUT_SECONDS="60")  # a held stop would last 60 s
    proc = start_cli(env, tmp_path / "server.log")
    body = json.dumps({"instances": [artifacts["pipe"].rows[0].tolist()]}).encode()
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            assert _post_on(sock, body) == b"HTTP/1.1 200 OK"
            time.sleep(7)  # idle past uvicorn's default keep-alive of 5 s
            ready, _, _ = select.select([sock], [], [], 0)
            assert not ready or sock.recv(1, socket.MSG_PEEK), "the server closed an idle connection after 7 s"
            assert _post_on(sock, body) == b"HTTP/1.1 200 OK"
            stopped = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=90) == 0
            assert time.monotonic() - stopped < 30, "an idle connection held the stop until the graceful timeout"
            assert sock.recv(1) == b"", "the idle connection was not closed at the stop"
    finally:
        if proc.poll() is None:
            proc.kill()
