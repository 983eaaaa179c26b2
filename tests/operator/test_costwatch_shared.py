"""The cost probe asks Prometheus once per question for a whole namespace, and every ModelDeployment
of it takes its own series from that answer (`costwatch.Shared`), over a real loopback HTTP server
that answers as Prometheus' query API does (`loopback_prom`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from modeldeploy_operator import costwatch
from modeldeploy_operator.analysis import QueryResult
from modeldeploy_operator.api import HistoryEntry, ModelDeploymentStatus
from modeldeploy_operator.cost import Prices
from modeldeploy_operator.model import Meta
from modeldeploy_operator.prom import Prometheus
from tests.operator.loopback_prom import ANSWERS, PromHandler, serving

PRICES = Prices(cpu_core_hour_usd=0.04, memory_gib_hour_usd=0.005, managed_per_1k_usd=0.40)
NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
MODELS = 10


def _answer() -> str:
    """Every model's stable revision `r<i>` has served (i + 1) x 100 requests; its one pod used
    (i + 1) / 100 cores; the series of another namespace's model or an unknown pod are ignored."""
    result: list[dict[str, Any]] = []
    for i in range(MODELS):
        value = str((i + 1) * 100)
        result.append({"metric": {"model": f"m{i}", "revision": f"r{i}"}, "value": [1, value]})
        result.append({"metric": {"pod": f"m{i}-r{i}-7d9f8c-x2k4q"}, "value": [1, str((i + 1) / 100)]})
    result.append({"metric": {"pod": "m1-r1-x-7d9f8c-x2k4q"}, "value": [1, "5"]})  # Deployment "m1-r1-x"
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}})


def _deployment(i: int) -> dict[str, Any]:
    return {
        "metadata": {"name": f"m{i}-r{i}", "labels": {"modeldeploy.io/revision": f"r{i}"}},
        "spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "server", "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}}]}}},
    }  # fmt: skip


def _status(i: int) -> ModelDeploymentStatus:
    # serving for 50 minutes: the window rounds down to 30 minutes, the same for every model
    return ModelDeploymentStatus(stable_revision=f"r{i}", history=[
        HistoryEntry(revision=f"r{i}", version="1", outcome="Deployed", time="2026-12-04T11:10:00Z")])  # fmt: skip


def _queries() -> list[str]:
    return [parse_qs(urlsplit(path).query)["query"][0] for path in PromHandler.seen]


def test_ten_models_of_a_namespace_share_one_query_per_question_each_reading_its_own_series(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(ANSWERS, "fleet", (200, _answer(), 0))
    monkeypatch.setattr(PromHandler, "mode", "fleet")
    clock = [0.0]
    with serving() as url:
        shared = costwatch.Shared(Prometheus(url, 5.0), clock=lambda: clock[0])
        out = [
            costwatch.measure(shared, PRICES, Meta(f"m{i}", "ml"), _status(i), {f"r{i}": _deployment(i)}, NOW, 2.0)
            for i in range(MODELS)
        ]
        # five questions (requests, seconds per row, the peak, CPU, memory), each asked once for all ten
        asked = _queries()
        assert len(asked) == 5 and shared.asked == 5, asked
        assert all('{namespace="ml"' in q and "[30m" in q for q in asked), asked
        for i, c in enumerate(out):
            assert c is not None and c.requests_window == "30m"
            assert c.requests_per_day == pytest.approx((i + 1) * 100 * 86_400 / 1800)
            # its own pod only: "m1-r1-x-..." belongs to another Deployment
            assert c.used_cpu_cores == pytest.approx((i + 1) / 100)
        # within SHARED_SECONDS the answer is reused; after it, asked again
        clock[0] = costwatch.SHARED_SECONDS - 1
        costwatch.measure(shared, PRICES, Meta("m0", "ml"), _status(0), {"r0": _deployment(0)}, NOW, 2.0)
        assert len(PromHandler.seen) == 5
        clock[0] = costwatch.SHARED_SECONDS + 1
        costwatch.measure(shared, PRICES, Meta("m0", "ml"), _status(0), {"r0": _deployment(0)}, NOW, 2.0)
        assert len(PromHandler.seen) == 10
        # another namespace is its own question
        costwatch.measure(shared, PRICES, Meta("m0", "other"), _status(0), {"r0": _deployment(0)}, NOW, 2.0)
        assert len(PromHandler.seen) == 15 and all('namespace="other"' in q for q in _queries()[10:])


def test_a_failed_answer_is_shared_only_briefly_and_empties_the_figures_it_feeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(PromHandler, "mode", "http500")
    clock = [0.0]
    with serving() as url:
        shared = costwatch.Shared(Prometheus(url, 5.0), clock=lambda: clock[0])
        first = costwatch.measure(shared, PRICES, Meta("m0", "ml"), _status(0), {"r0": _deployment(0)}, NOW, 2.0)
        costwatch.measure(shared, PRICES, Meta("m1", "ml"), _status(1), {"r1": _deployment(1)}, NOW, 2.0)
        assert len(PromHandler.seen) == 5  # the second model took the same failed answers
        assert first is not None and first.requests_per_day is None and first.used_cpu_cores is None
        assert first.monthly_usd is not None  # the pods' price needs no query
        monkeypatch.setitem(ANSWERS, "fleet", (200, _answer(), 0))
        monkeypatch.setattr(PromHandler, "mode", "fleet")
        clock[0] = costwatch.FAILED_SECONDS + 0.1
        again = costwatch.measure(shared, PRICES, Meta("m0", "ml"), _status(0), {"r0": _deployment(0)}, NOW, 2.0)
        assert len(PromHandler.seen) == 10 and again is not None
        assert again.requests_per_day == pytest.approx(100 * 86_400 / 1800)


def test_windows_round_down_to_a_few_lengths_so_that_objects_share_them() -> None:
    assert [costwatch.rounded_window(s) for s in (0, 59, 60, 150, 299, 300, 3000, 3600, 50_000, 10**7)] == [
        60, 60, 60, 120, 120, 300, 1800, 3600, 43_200, 86_400]  # fmt: skip
    q = costwatch.queries("ml", 86_400, 2.0)
    assert q["requests"] == 'sum by (model, revision) (increase(modeldeploy_requests_total{namespace="ml"}[1d]))'
    # no series where nothing was counted, not 0/0
    assert q["seconds_per_row"].endswith('(increase(modeldeploy_predictions_total{namespace="ml"}[1d])) > 0)')
    pods = {("m1-r1-abc12-x9z8y",): 1.0, ("m1-r1-abc12-x9z8z",): 2.0, ("m1-r1.v2-abc12-x9z8y",): 4.0,
            ("m1-r1-x-abc12-x9z8y",): 8.0, ("m1-r1-abc12",): 16.0, ("m1-r1-ABC-x",): 32.0}  # fmt: skip
    summed = costwatch.per_deployment(QueryResult(series=pods)).series
    assert summed == {("m1-r1",): 3.0, ("m1-r1.v2",): 4.0, ("m1-r1-x",): 8.0, ("m1",): 16.0}
