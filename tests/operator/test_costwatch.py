"""The cost probe never holds a tick (issue 11's scale work, issue 15's status.cost).

A real loopback Prometheus-shaped HTTP server answers every query with one number, but only once
the test lets it: while it holds its answers, a tick that finds `status.cost` due must return at
once, and a later tick copies the figures into the status it writes (or writes them alone once
they have waited `HOLD_SECONDS`). Before the change a tick sent the probe's queries from its own
thread, one after another, and waited for each.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modeldeploy_operator import costwatch
from modeldeploy_operator.api import HistoryEntry, ModelDeploymentStatus, parse_spec
from modeldeploy_operator.children import LABEL_REVISION
from modeldeploy_operator.costwatch import CostWatch
from modeldeploy_operator.model import Meta
from modeldeploy_operator.prom import Prometheus
from modeldeploy_operator.settings import OperatorSettings
from tests.operator.jsonhttp import JSONHandler, serve

META = Meta("iris", "ml", uid="u-1")
SPEC = parse_spec({"model": {"uri": "https://m.example/iris.skops", "version": "2"}})
NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
REQUESTS_IN_WINDOW = 8640.0  # every query answers this: over the 1 h window, 207,360 requests a day


class _Gate(JSONHandler):
    open = threading.Event()
    queries: list[str] = []

    def answer(self) -> tuple[int, bytes]:
        type(self).queries.append(self.path)
        type(self).open.wait(10)
        sample = {"metric": {}, "value": [1, str(REQUESTS_IN_WINDOW)]}
        return 200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": [sample]}}).encode()


@pytest.fixture
def prometheus() -> Iterator[str]:
    _Gate.open.clear()
    _Gate.queries.clear()
    with serve(_Gate) as url:
        yield url
        _Gate.open.set()


def _deployment(revision: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"iris-{revision}", "labels": {LABEL_REVISION: revision},
                     "ownerReferences": [{"uid": META.uid}]},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "server", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]}}},
    }  # fmt: skip


def _status(stable: str = "abc") -> ModelDeploymentStatus:
    started = (NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return ModelDeploymentStatus(
        stable_revision=stable, history=[HistoryEntry(revision=stable, version="2", outcome="Deployed", time=started)]
    )


def _watch(url: str) -> CostWatch:
    return CostWatch(lambda meta: [_deployment("abc"), _deployment("def")], Prometheus(url, 5.0), OperatorSettings())


def _wait_done(watch: CostWatch, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with watch.lock:
            if all(slot.job.done() for slot in watch.slots.values()):
                return
        time.sleep(0.01)
    raise AssertionError("the cost probe did not finish")


def test_a_tick_that_finds_cost_due_does_not_wait_for_prometheus(prometheus: str) -> None:
    watch = _watch(prometheus)
    status = _status()
    started = time.monotonic()
    watch(SPEC, META, status, NOW, True)
    took = time.monotonic() - started
    assert took < 1.0, f"the tick waited {took:.2f}s for the cost queries"
    assert status.cost is None  # asked, not answered yet
    watch(SPEC, META, status, NOW + timedelta(seconds=5), True)  # Prometheus still holds: nothing to copy
    assert status.cost is None
    _Gate.open.set()
    _wait_done(watch)
    watch(SPEC, META, status, NOW + timedelta(seconds=10), True)  # a tick that writes status anyway
    assert status.cost is not None and status.cost.requests_per_day == pytest.approx(REQUESTS_IN_WINDOW * 24)
    assert status.cost.time == "2026-12-04T12:00:00Z"  # when it was measured
    asked = len(_Gate.queries)
    assert asked >= 2  # the volume and the stable pods' figures at least
    watch(SPEC, META, status, NOW + timedelta(seconds=15), True)
    assert len(_Gate.queries) == asked, "refreshed again within the minute"


def test_figures_wait_for_a_status_write_then_are_written_alone(prometheus: str) -> None:
    _Gate.open.set()
    watch = _watch(prometheus)
    status = _status()
    watch(SPEC, META, status, NOW - timedelta(minutes=2), True)
    _wait_done(watch)
    watch(SPEC, META, status, NOW - timedelta(minutes=2), True)
    earlier = status.cost  # figures two minutes old: due again with a write, not yet alone
    assert earlier is not None
    watch(SPEC, META, status, NOW, True)
    _wait_done(watch)
    watch(SPEC, META, status, NOW + timedelta(seconds=5), False)  # this tick writes nothing: keep them
    assert status.cost is earlier
    watch(SPEC, META, status, NOW + timedelta(seconds=costwatch.HOLD_SECONDS), False)
    assert status.cost is not earlier and status.cost is not None, "held past HOLD_SECONDS without a write"
    assert status.cost.time == "2026-12-04T12:00:00Z"


def test_figures_of_a_stable_that_was_replaced_are_dropped(prometheus: str) -> None:
    _Gate.open.set()
    watch = _watch(prometheus)
    watch(SPEC, META, _status("abc"), NOW, True)
    _wait_done(watch)
    promoted = _status("def")
    watch(SPEC, META, promoted, NOW + timedelta(seconds=5), True)
    assert promoted.cost is None  # abc's figures are not def's: asked again instead
    _wait_done(watch)
    watch(SPEC, META, promoted, NOW + timedelta(seconds=10), True)
    assert promoted.cost is not None and promoted.cost.replicas == 2
    watch.forget("ml", "iris")
    assert not watch.slots
