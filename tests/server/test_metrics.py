"""The metric contract (names, labels, buckets) pinned against the real /metrics output, the
operator's own PromQL, promtool, and multi-process workers (no loss, no double count)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modeldeploy_server import metrics
from tests.server.conftest import Artifact, Served, free_port, start_cli, wait_ready

CONTRACT = {
    "modeldeploy_requests": ("counter", {"model", "version", "revision", "code", "outcome"}),
    "modeldeploy_request_duration_seconds": ("histogram", {"model", "version", "revision", "outcome"}),
    "modeldeploy_rejections": ("counter", {"model", "version", "revision", "reason"}),
    "modeldeploy_predictions": ("counter", {"model", "version", "revision"}),
    "modeldeploy_model_info": ("gauge", {"model", "version", "revision", "sha256", "format", "sklearn_version"}),
}


@pytest.fixture(scope="module")
def served(artifacts: dict[str, Artifact], serve: Any, cache_dir: Path) -> Served:
    s = serve(artifacts["pipe"].settings(cache_dir))
    s.client.post("/v1/models/pipe:predict", json={"instances": [[5.0, 3.0, 1.5, 0.2]]})
    s.client.post("/v1/models/pipe:predict", json={"instances": [[50.0, 3.0, 1.5, 0.2]]})
    return s


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_names_types_and_labels_are_the_contract(served: Served) -> None:
    families = _families(served.client.get("/metrics").text)
    for name, (kind, labels) in CONTRACT.items():
        family = families[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
            assert (sample.labels["model"], sample.labels["version"], sample.labels["revision"]) == (
                "pipe", "7", "abc123")  # fmt: skip
    buckets = sorted({float(s.labels["le"]) for s in families["modeldeploy_request_duration_seconds"].samples
                      if "le" in s.labels})  # fmt: skip
    assert buckets[0] == 0.0005 and buckets[-2] == 10.0
    outcomes = {(s.labels["code"], s.labels["outcome"]) for s in families["modeldeploy_requests"].samples}
    assert {("200", "success"), ("422", "rejected")} <= outcomes
    info = families["modeldeploy_model_info"].samples[0]
    assert info.value == 1 and info.labels["format"] == "joblib" and len(info.labels["sha256"]) == 64


def test_error_series_exist_at_zero_before_any_error(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path
) -> None:
    """A fresh server exports code="500" (and the other common codes) at 0: the operator's
    increase(...{code=~"5.."}[W]) can only count errors that land on a series that already existed."""
    fresh = serve(artifacts["pipe"].settings(cache_dir))
    samples = {
        s.labels["code"]: (s.labels["outcome"], s.value)
        for s in _families(fresh.client.get("/metrics").text)["modeldeploy_requests"].samples
        if s.name == "modeldeploy_requests_total"
    }
    assert samples["500"] == ("error", 0.0) and samples["503"] == ("unavailable", 0.0), samples
    assert samples["499"] == ("client_closed", 0.0) and samples["405"] == ("rejected", 0.0), samples
    assert samples["422"] == ("rejected", 0.0) and samples["200"] == ("success", 0.0), samples
    assert set(samples) == {str(c) for c in metrics.PRECREATED_CODES}


def test_operator_queries_select_the_servers_series(served: Served) -> None:
    analysis = pytest.importorskip("modeldeploy_operator.analysis")
    text = served.client.get("/metrics").text
    queries = analysis.builtin_queries("ns", "pipe", "abc123", 30)
    assert queries, "the operator builds no queries"
    for query in queries.values():
        for name, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", query):
            samples = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
            assert samples, f"{name} (from {query}) is not exported"
            for label, op, value in re.findall(r'(\w+)\s*(=~|!=|=)\s*"([^"]*)"', matchers):
                if label == "namespace":  # added by Prometheus from service discovery
                    continue
                assert all(label in s.labels for s in samples), f"{name} has no label {label}"
                if op == "=":
                    assert any(s.labels[label] == value for s in samples), f"{name}{{{label}={value!r}}} absent"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
def test_promtool_check_metrics_passes(served: Served) -> None:
    text = served.client.get("/metrics").text
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_workers_neither_lose_nor_double_count(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    port = free_port()
    env = artifacts["pipe"].env(MODELDEPLOY_PORT=str(port), MODELDEPLOY_WORKERS="2",
                                MODELDEPLOY_CACHE_DIR=str(tmp_path / "cache"))  # fmt: skip
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prom")
    (tmp_path / "prom").mkdir()
    (tmp_path / "prom" / "stale_counter_999.db").write_bytes(b"junk from an earlier run")
    proc = start_cli(env, tmp_path / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        n = 60
        for i in range(n):  # fresh connections: spread over both workers
            with httpx.Client(base_url=url) as client:
                status = client.post(
                    "/v1/models/pipe:predict", json={"instances": [[5.0, 3.0, 1.5, 0.2]] * (1 + i % 3)}
                )
                assert status.status_code == 200
        text = httpx.get(f"{url}/metrics").text
        families = _families(text)
        total = sum(s.value for s in families["modeldeploy_requests"].samples if s.labels["code"] == "200")
        rows = sum(s.value for s in families["modeldeploy_predictions"].samples)
        assert (total, rows) == (n, sum(1 + i % 3 for i in range(n)))
        assert len(families["modeldeploy_model_info"].samples) == 1
        if shutil.which("promtool"):
            result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
            assert result.returncode == 0, result.stdout + result.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), (tmp_path / "server.log").read_text()[-2000:]


def test_metric_name_constants() -> None:
    assert (metrics.REQUESTS, metrics.DURATION, metrics.REJECTIONS, metrics.PREDICTIONS, metrics.INFO) == (
        "modeldeploy_requests_total", "modeldeploy_request_duration_seconds", "modeldeploy_rejections_total",
        "modeldeploy_predictions_total", "modeldeploy_model_info")  # fmt: skip
