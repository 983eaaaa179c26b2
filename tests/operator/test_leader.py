"""Leader election on a Lease (issue 11 M9): two replicas never act at once, and killing the leader
hands over within the lease duration. A fake Lease API with resourceVersions, a fake clock."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from modeldeploy_operator.leader import Elector


class FakeLeases:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.lease)

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        self._store(body)

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        assert self.lease is not None
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self._store(body)

    def _store(self, body: dict[str, Any]) -> None:
        self.rv += 1
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["resourceVersion"] = str(self.rv)

    @property
    def holder(self) -> str:
        return str((self.lease or {}).get("spec", {}).get("holderIdentity"))


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_one_leader_and_a_killed_leader_is_replaced_within_the_lease() -> None:
    leases, clock = FakeLeases(), Clock()
    a = Elector(leases, "ops", "a", clock=clock)
    b = Elector(leases, "ops", "b", clock=clock)
    assert a.step() and not b.step()
    assert leases.holder == "a" and a.is_leader() and not b.is_leader()
    for _ in range(10):  # both run: a renews, b stands by
        clock.t += 2
        a.step()
        b.step()
        assert a.is_leader() and not b.is_leader()
    killed_at = clock.t  # a is SIGKILLed: it never steps again
    took_over = None
    while took_over is None:
        clock.t += 2
        b.step()
        assert not (a.is_leader() and b.is_leader())  # never two leaders, by a's own clock either
        if b.is_leader():
            took_over = clock.t - killed_at
    assert 15 <= took_over <= 18 and leases.holder == "b"
    assert leases.lease is not None and leases.lease["spec"]["leaseTransitions"] == 1


def test_two_candidates_racing_for_an_expired_lease_have_one_winner() -> None:
    leases, clock = FakeLeases(), Clock()
    old = Elector(leases, "ops", "old", clock=clock)
    old.step()
    a = Elector(leases, "ops", "a", clock=clock)
    b = Elector(leases, "ops", "b", clock=clock)
    a.step()
    b.step()
    clock.t += 20
    # both read the same expired record, then both write: the second write gets 409
    original_get = leases.get
    snapshot = original_get("ops", "x")
    leases.get = lambda namespace, name: copy.deepcopy(snapshot)  # type: ignore[method-assign]
    results = [a.step(), b.step()]
    assert results == [True, False] and leases.holder == "a"


def test_a_standby_replica_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from modeldeploy_operator import handlers
    from modeldeploy_operator.model import Config

    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"a standby replica called {name}")

    shell = handlers.Shell(Untouchable(), Untouchable(), Config(), leader=lambda: False)  # type: ignore[arg-type]
    assert handlers.reconcile_once(shell, "ml", "iris") == handlers.STANDBY


class UnreachableLeases(FakeLeases):
    """The API server restarting: every call fails to connect while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        if self.down:
            raise urllib3.exceptions.MaxRetryError(None, "/leases", reason=ConnectionRefusedError())  # type: ignore[arg-type]
        return super().get(namespace, name)


def test_the_api_server_unreachable_does_not_end_leader_election() -> None:
    # the chart's operator pod: its election thread died on the first refused connection during an
    # API server restart, so the Lease lapsed and no replica acted again (tests/e2e/test_faults.py)
    leases, clock = UnreachableLeases(), Clock()
    a = Elector(leases, "ops", "a", clock=clock)
    assert a.step()
    leases.down = True
    clock.t += 2
    assert a.step()  # no exception; still the leader within the renew deadline
    clock.t += 10
    assert not a.step()  # no renewal for 12 s: it stops acting
    leases.down = False
    clock.t += 2
    assert a.step() and leases.holder == "a"  # back: renews its own Lease
