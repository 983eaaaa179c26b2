"""Synthetic server metrics for the operator scale benchmark (`bench/operator_scale.py`).

Serves on 127.0.0.1:PORT/metrics the series the inference server exports
(`modeldeploy_requests_total`, `modeldeploy_request_duration_seconds`), with the server's label
names, for the stable and canary revision of every ModelDeployment it sees (a LIST every 2 s), as
if each revision answered RATE requests per second in under 10 ms. Prometheus scrapes it, so the
operator's analysis runs real PromQL over real series while no server process runs (kwok pods).

A breach: when the file BAD_FILE holds `namespace/name unix_time`, that object's canary revision
answers 30% of its requests with errors from that time on.

Usage: python bench/synthetic_exporter.py KUBECONFIG PORT BAD_FILE
"""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client, config

RATE = 5.0  # requests per second per revision
ERROR_SHARE = 0.3
BUCKETS = ("0.005", "0.01", "0.05", "0.1", "0.5", "+Inf")
SHARES = (0.5, 1.0, 1.0, 1.0, 1.0, 1.0)  # half the requests under 5 ms, all under 10 ms


class Series:
    def __init__(self, kubeconfig: str, bad_file: Path) -> None:
        config.load_kube_config(kubeconfig)  # type: ignore[no-untyped-call]
        self.custom = client.CustomObjectsApi()
        self.bad_file = bad_file
        self.born: dict[tuple[str, str, str], float] = {}  # (ns, name, revision) -> first seen
        self.canary: dict[tuple[str, str], str] = {}
        self.lists = 0
        self.lock = threading.Lock()

    def poll(self) -> None:
        while True:
            try:
                got: Any = self.custom.list_cluster_custom_object(
                    "modeldeploy.io", "v1alpha1", "modeldeployments", _request_timeout=30
                )
                self.lists += 1
                now = time.time()
                with self.lock:
                    for item in got.get("items", []):
                        ns, name = item["metadata"]["namespace"], item["metadata"]["name"]
                        status = item.get("status") or {}
                        for key in ("stableRevision", "canaryRevision"):
                            rev = status.get(key)
                            if rev:
                                self.born.setdefault((ns, name, rev), now)
                        if status.get("canaryRevision"):
                            self.canary[(ns, name)] = status["canaryRevision"]
            except Exception as err:  # noqa: BLE001 - keep serving what we have
                print(f"list failed: {err}", file=sys.stderr, flush=True)
            time.sleep(2.0)

    def bad(self) -> tuple[str, str, float] | None:
        try:
            text = self.bad_file.read_text().split()
        except FileNotFoundError:
            return None
        ns, name = text[0].split("/", 1)
        return ns, name, float(text[1])

    def render(self) -> bytes:
        now = time.time()
        bad = self.bad()
        lines = [
            "# TYPE modeldeploy_requests_total counter",
        ]
        hist: list[str] = ["# TYPE modeldeploy_request_duration_seconds histogram"]
        with self.lock:
            items = list(self.born.items())
            canary = dict(self.canary)
        for (ns, name, rev), born in items:
            total = RATE * (now - born)
            errors = 0.0
            if bad is not None and (ns, name) == bad[:2] and canary.get((ns, name)) == rev and now > bad[2]:
                errors = ERROR_SHARE * RATE * (now - max(bad[2], born))
            ok = total - errors
            base = f'namespace="{ns}",model="{name}",version="v",revision="{rev}"'
            lines.append(f'modeldeploy_requests_total{{{base},code="200",outcome="success"}} {ok:.3f}')
            lines.append(f'modeldeploy_requests_total{{{base},code="500",outcome="error"}} {errors:.3f}')
            for outcome, n in (("success", ok), ("error", errors)):
                for le, share in zip(BUCKETS, SHARES, strict=True):
                    hist.append(
                        f'modeldeploy_request_duration_seconds_bucket{{{base},outcome="{outcome}",le="{le}"}} '
                        f"{n * share:.3f}"
                    )
                hist.append(f'modeldeploy_request_duration_seconds_count{{{base},outcome="{outcome}"}} {n:.3f}')
                hist.append(f'modeldeploy_request_duration_seconds_sum{{{base},outcome="{outcome}"}} {n * 0.004:.4f}')
        return ("\n".join(lines + hist) + "\n").encode()


def main() -> int:
    kubeconfig, port, bad_file = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    series = Series(kubeconfig, bad_file)
    threading.Thread(target=series.poll, daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/metrics"):
                body = series.render()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
            elif self.path.startswith("/lists"):  # how many LISTs this exporter sent (the bench subtracts them)
                body = str(series.lists).encode()
                self.send_response(200)
            else:
                body = b"not found\n"
                self.send_response(404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
