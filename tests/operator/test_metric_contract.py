"""The operator's PromQL asks for metrics and labels the real server exposes (the names are a contract).

A real `modeldeploy-server` process on 127.0.0.1 serves a real sklearn model (the `bad` one of the
e2e helpers, which answers 200, 500 and 422); its /metrics text is parsed with prometheus_client's
parser and every selector of the operator's built-in queries is matched against it.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modeldeploy_operator import analysis
from tests.operator.e2e_helpers import INPUTS, ArtifactServer, start_server, train_models

# Labels Prometheus adds from service discovery (the local cluster's and a real cluster's scrape configs).
TARGET_LABELS = {"namespace", "pod"}
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"([^"]*)"')


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, dict[str, str], float]]:
    folder = tmp_path_factory.mktemp("contract")
    models = train_models(folder)
    store = ArtifactServer(folder)
    bad = models["bad"]
    env = {
        "MODELDEPLOY_MODEL_NAME": "iris", "MODELDEPLOY_MODEL_URI": bad.uri(store.url),
        "MODELDEPLOY_MODEL_SHA256": bad.sha256, "MODELDEPLOY_MODEL_VERSION": "3",
        "MODELDEPLOY_MODEL_REVISION": "0123abcdef", "MODELDEPLOY_INPUTS": json.dumps(INPUTS),
    }  # fmt: skip
    try:
        with start_server(env, folder / "server.log") as url:
            codes = []
            for row in ([5.1, 3.5, 1.4, 0.2], [6.0, 3.0, 4.8, 1.8], [0.0, 3.0, 4.8, 1.8], [1.0, 2.0]):
                codes.append(httpx.post(f"{url}/v1/models/iris:predict", json={"instances": [row]}).status_code)
            assert codes == [200, 200, 500, 422]
            text = httpx.get(f"{url}/metrics").text
    finally:
        store.close()
    return [(s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def test_every_builtin_query_selects_real_series(scraped: list[tuple[str, dict[str, str], float]]) -> None:
    queries = analysis.builtin_queries("ml", "iris", "0123abcdef", 30)
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
    assert {code: v for code, v in requests.items() if v} == {"200": 2.0, "500": 1.0, "422": 1.0}
    assert requests["503"] == 0.0
    errors = sum(v for code, v in requests.items() if re.fullmatch("5..", code))
    assert errors / sum(requests.values()) == 0.25  # the 422 is a rejection, not an error


def test_latency_histogram_has_the_labels_the_p99_query_groups_by(
    scraped: list[tuple[str, dict[str, str], float]],
) -> None:
    buckets = [s for n, s, _ in scraped if n == analysis.DURATION_BUCKET_METRIC]
    assert {"le", "model", "revision"} <= set(buckets[0])
    assert any(s["le"] == "+Inf" for s in buckets)
    assert {s["revision"] for s in buckets} == {"0123abcdef"} and {s["model"] for s in buckets} == {"iris"}
