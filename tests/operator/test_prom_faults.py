"""The operator's Prometheus client against a real loopback HTTP server that misbehaves (issue 11):
5xx, HTML instead of JSON, a JSON error, NaN and +Inf, a wrong shape, a connection refused, and
an answer slower than the timeout. Each becomes a QueryResult (an Error check holds the canary,
NaN is "no data"); nothing raises out of `Prometheus.run`, and each takes at most the timeout."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from modeldeploy_operator import analysis
from modeldeploy_operator.api import AnalysisSpec
from modeldeploy_operator.prom import Prometheus
from tests.operator.loopback_prom import PromHandler, serving


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serving() as url:
        yield url


PLAN = analysis.plan(AnalysisSpec(), "ml", "iris", "abc", 1, 20, 10)


@pytest.mark.parametrize(
    ("mode", "expect"),
    [("http500", "error"), ("html", "error"), ("prom_error", "error"), ("nan", "none"), ("inf", "inf"),
     ("shape", "error"), ("slow", "error")],
)  # fmt: skip
def test_a_misbehaving_prometheus_becomes_a_result_never_an_exception(server: str, mode: str, expect: str) -> None:
    PromHandler.mode = mode
    prom = Prometheus(server, timeout_seconds=1.0)
    started = time.monotonic()
    out = prom.run(PLAN, datetime.now(UTC))
    took = time.monotonic() - started
    assert set(out) == {q.name for q in PLAN.queries}
    first = out["requests"]
    if expect == "error":
        assert first.error and first.value is None, first
    elif expect == "none":
        assert first.error is None and first.value is None
    else:
        assert first.value == float("inf")
    # an unreachable or hanging Prometheus costs one timeout per tick, not one per query
    assert took < 1.0 * len(PLAN.queries) + 0.5 if mode != "slow" else took < 2.5, took


def test_a_refused_connection_costs_one_attempt(server: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    out = Prometheus(f"http://127.0.0.1:{port}", timeout_seconds=1.0).run(PLAN, datetime.now(UTC))
    assert all(r.error and "talking to" in r.error for r in out.values())
