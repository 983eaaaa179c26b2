"""The operator's PromQL asks for metrics and labels the real server exposes (the names are a contract).

A real `modeldeploy-server` process on 127.0.0.1 serves a real sklearn model (the demo's and the e2e
scenarios' `bad` one, which answers 200, 500 and 422; plus a route 404, a 405 and an abandoned upload, 499);
its /metrics text is parsed with prometheus_client's parser and every selector of the operator's
built-in queries is matched against it, and evaluated on it: the error rate and the p99 see only
the requests the model answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modeldeploy_demo.workload import BIN, INPUTS, ZERO_FEATURE, ArtifactServer, free_port, rows, train_models, wait_for
from modeldeploy_operator import analysis, compare
from modeldeploy_operator.api import AnalysisSpec
from modeldeploy_server.metrics import FLUSH_SECONDS

# Labels Prometheus adds from service discovery (the local cluster's and a real cluster's scrape configs).
TARGET_LABELS = {"namespace", "pod"}
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"([^"]*)"')


@contextlib.contextmanager
def start_server(env: dict[str, str], log: Path) -> Iterator[str]:
    """The real server process on 127.0.0.1:<free port>; yields its base URL once ready."""
    port = free_port()
    full = {**os.environ, **env, "MODELDEPLOY_HOST": "127.0.0.1", "MODELDEPLOY_PORT": str(port)}
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "modeldeploy-server")], env=full, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"modeldeploy-server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(ready, 120, "the server to be ready")  # imports take long on a loaded machine
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, dict[str, str], float]]:
    folder = tmp_path_factory.mktemp("contract")
    models = train_models(folder)
    store = ArtifactServer(folder)
    bad = models["bad"]
    env = {
        "MODELDEPLOY_MODEL_NAME": "wine", "MODELDEPLOY_MODEL_URI": bad.uri(store.url),
        "MODELDEPLOY_MODEL_SHA256": bad.sha256, "MODELDEPLOY_MODEL_VERSION": "3",
        "MODELDEPLOY_MODEL_REVISION": "0123abcdef", "MODELDEPLOY_INPUTS": json.dumps(INPUTS),
    }  # fmt: skip
    try:
        with start_server(env, folder / "server.log") as url:
            codes = []
            good = rows(2, 0.0)
            zero = [*good[0][:ZERO_FEATURE], 0.0, *good[0][ZERO_FEATURE + 1 :]]
            for row in (*good, zero, [1.0, 2.0]):
                codes.append(httpx.post(f"{url}/v1/models/wine:predict", json={"instances": [row]}).status_code)
            assert codes == [200, 200, 500, 422]
            # requests the model never answered: a route 404, a 405, an upload the client abandoned
            assert httpx.get(f"{url}/v2/no-such-route").status_code == 404
            assert httpx.get(f"{url}/v1/models/wine:predict").status_code == 405
            _abandon_upload(url)
            time.sleep(2 * FLUSH_SECONDS)  # the worker the scrape does not reach exports its rows by then
            text = httpx.get(f"{url}/metrics").text
    finally:
        store.close()
    return [(s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def _abandon_upload(url: str) -> None:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b'POST /v1/models/wine:predict HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{"inst')
    deadline = time.monotonic() + 10
    while not _count(httpx.get(f"{url}/metrics").text, "499"):
        assert time.monotonic() < deadline, "the abandoned upload was never counted"
        time.sleep(0.05)


def _count(text: str, code: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == analysis.REQUESTS_METRIC and s.labels["code"] == code)  # fmt: skip


def _selected(promql: str, scraped: list[tuple[str, dict[str, str], float]]) -> list[tuple[dict[str, str], float]]:
    """The samples a query's one selector picks (its server-side matchers applied)."""
    ((metric, matchers),) = SELECTOR.findall(promql)
    picked = []
    for name, labels, value in scraped:
        if name != metric:
            continue
        ok = True
        for label, op, want in MATCHER.findall(matchers):
            if label in TARGET_LABELS:
                continue
            have = labels.get(label, "")
            ok &= {"=": have == want, "!=": have != want, "=~": bool(re.fullmatch(want, have)),
                   "!~": not re.fullmatch(want, have)}[op]  # fmt: skip
        if ok:
            picked.append((labels, value))
    return picked


def test_error_rate_and_p99_use_only_the_requests_the_model_answered(
    scraped: list[tuple[str, dict[str, str], float]],
) -> None:
    """A flood of cheap 422s (or 404s, 405s, abandoned uploads) can neither dilute the error rate nor pull
    the canary's p99 down: the queries select the 200s and the 500 only."""
    queries = analysis.builtin_queries("ml", "wine", "0123abcdef", 30)
    requests = _selected(queries[analysis.REQUESTS], scraped)
    assert sorted((s["code"], v) for s, v in requests if v) == [("200", 2.0), ("500", 1.0)]
    errors = _selected(queries[analysis.ERRORS], scraped)
    assert [(s["code"], v) for s, v in errors if v] == [("500", 1.0)]
    latency = _selected(queries[analysis.LATENCY_P99], scraped)
    infinite = sum(v for s, v in latency if s["le"] == "+Inf")
    assert infinite == 3.0  # the 2 predictions and the model's failure; not the 422, 404, 405 or 499


def test_every_builtin_query_selects_real_series(scraped: list[tuple[str, dict[str, str], float]]) -> None:
    queries = analysis.builtin_queries("ml", "wine", "0123abcdef", 30)
    assert set(queries) == {analysis.REQUESTS, analysis.ERRORS, analysis.LATENCY_P99}
    for name, promql in queries.items():
        selectors = SELECTOR.findall(promql)
        assert selectors, promql
        for metric, matchers in selectors:
            series = [labels for n, labels, _ in scraped if n == metric]
            assert series, f"{name}: the server exposes no {metric}"
            for label, op, value in MATCHER.findall(matchers):
                if label in TARGET_LABELS:
                    continue
                assert all(label in s for s in series), f"{name}: {metric} lacks label {label}"
                if op == "=":
                    assert any(s[label] == value for s in series), f"{name}: no {metric}{{{label}={value!r}}}"
                elif op == "=~":
                    assert any(re.fullmatch(value, s[label]) for s in series), f"{name}: no {label}=~{value!r}"


def test_the_error_rate_counts_only_5xx(scraped: list[tuple[str, dict[str, str], float]]) -> None:
    requests = {s["code"]: v for n, s, v in scraped if n == analysis.REQUESTS_METRIC}
    # the server also exports the other common codes at 0 (so increase() sees a series' first error)
    assert {code: v for code, v in requests.items() if v} == {
        "200": 2.0, "500": 1.0, "422": 1.0, "404": 1.0, "405": 1.0, "499": 1.0}  # fmt: skip
    assert requests["503"] == 0.0
    errors = sum(v for code, v in requests.items() if re.fullmatch("5..", code))
    assert errors / (requests["200"] + requests["500"]) == 1 / 3  # the 422 is a rejection, not an error


def test_latency_histogram_has_the_labels_the_p99_query_groups_by(
    scraped: list[tuple[str, dict[str, str], float]],
) -> None:
    buckets = [s for n, s, _ in scraped if n == analysis.DURATION_BUCKET_METRIC]
    assert {"le", "model", "revision"} <= set(buckets[0])
    assert any(s["le"] == "+Inf" for s in buckets)
    assert {s["revision"] for s in buckets} == {"0123abcdef"} and {s["model"] for s in buckets} == {"wine"}


def test_canary_against_stable_queries_select_real_series_and_count_what_they_say(
    scraped: list[tuple[str, dict[str, str], float]],
) -> None:
    """Errors over answered requests (like the built-in rate); refusals (422) over the rows that
    reached the contract: answered plus refused, not 404s, 405s, 503s or abandoned uploads."""
    spec = AnalysisSpec(max_error_rate_increase=0.01, max_refusal_rate_increase=0.05)
    queries = compare.queries(spec, "ml", "wine", "0123abcdef", "0123abcdef", 600)
    assert len(queries) == 8  # n and events of two checks, for each arm
    counted = {name: sum(v for _, v in _selected(q, scraped)) for name, q in queries.items()}
    assert all(_selected(q, scraped) for q in queries.values()), queries
    for arm in ("canary", "stable"):
        assert counted[f"judge:{arm}:answered"] == 3.0 and counted[f"judge:{arm}:error-rate-increase"] == 1.0
        assert counted[f"judge:{arm}:contract"] == 4.0 and counted[f"judge:{arm}:refusal-rate-increase"] == 1.0


def test_the_p99_ratio_asks_the_buckets_the_server_has(scraped: list[tuple[str, dict[str, str], float]]) -> None:
    buckets = {s["le"] for n, s, _ in scraped if n == analysis.DURATION_BUCKET_METRIC}
    assert buckets == set(compare.LE)
    spec = AnalysisSpec(max_latency_p99_ratio=1.5)
    queries = compare.queries(spec, "ml", "wine", "0123abcdef", "0123abcdef", 600)
    assert all(f'le="{le}"' in queries[f"judge:canary:le={le}"] for le in compare.LE)
    finite = [sum(v for _, v in _selected(queries[f"judge:canary:le={le}"], scraped)) for le in compare.LE[:-1]]
    answered = ("success", "error")
    inf = [(s, v) for n, s, v in scraped if n == analysis.DURATION_BUCKET_METRIC and s["le"] == "+Inf"]
    everything = sum(v for s, v in inf if s["outcome"] in answered)
    assert everything == 3.0 and finite == sorted(finite) and finite[-1] <= 3.0  # 2 predictions, 1 model failure


def test_prediction_shift_and_input_drift_ask_the_series_the_server_has(
    scraped: list[tuple[str, dict[str, str], float]],
) -> None:
    """The class counters count the rows the model answered (not the 500, not the 422); every
    declared input is binned over its range; without a profile there are no reference shares."""
    spec = AnalysisSpec(max_prediction_shift=0.1, max_input_drift=0.1)
    queries = compare.queries(spec, "ml", "wine", "0123abcdef", "0123abcdef", 600)
    classes = _selected(queries["judge:canary:classes"], scraped)
    assert sorted(s["class"] for s, _ in classes) == ["0", "1", "2"]  # every class, at 0 from the start
    assert sum(v for _, v in classes) == 2.0
    assert _selected(queries["judge:stable:bins"], scraped) == []  # class labels, not scores
    inputs = _selected(queries["judge:canary:inputs"], scraped)
    assert {s["feature"] for s, _ in inputs} == {i["name"] for i in INPUTS}
    assert {s["bin"] for s, _ in inputs} == {str(b) for b in range(10)}
    assert sum(v for _, v in inputs) == 2.0 * len(INPUTS)
    assert _selected(queries["judge:canary:reference"], scraped) == []
    nonfinite = [v for n, _, v in scraped if n == "modeldeploy_nonfinite_outputs_total"]
    assert nonfinite == [0.0]  # the bad model raises on the 0.0 row: a failure, not a NaN answer
