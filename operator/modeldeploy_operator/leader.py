"""Leader election on a coordination.k8s.io/v1 Lease, so that only one operator replica acts.

Started by `__main__` when MODELDEPLOY_OPERATOR_LEADER_ELECTION_NAMESPACE is set (the chart sets
it); `handlers.reconcile_once` asks `is_leader()` first and does nothing on a standby replica.
After client-go's leaderelection: the holder renews the Lease every `retry_seconds`; a standby
takes it over when the record has not changed for `lease_seconds` by its *own* clock (it never
compares another machine's timestamps, so clock skew does not matter); every write carries the
resourceVersion it read, so two candidates never both win. A leader that could not renew for
`renew_deadline_seconds` stops acting before anyone else may take over (lease > renew deadline).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("modeldeploy.operator.leader")

LEASE_NAME = "modeldeploy-operator"


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseApi:
    """The three Lease calls the elector makes (a fake with the same methods stands in for tests)."""

    def __init__(self, api: client.ApiClient, timeout_seconds: float) -> None:
        self.api = client.CoordinationV1Api(api)
        self.t = timeout_seconds

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            got = self.api.read_namespaced_lease(name, namespace, _preload_content=False, _request_timeout=self.t)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return cast(dict[str, Any], json.loads(got.data))  # type: ignore[attr-defined]

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        # the client takes plain dicts as bodies (its typing says V1Lease)
        self.api.create_namespaced_lease(namespace, body, _preload_content=False, _request_timeout=self.t)  # type: ignore[arg-type]

    def replace(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.api.replace_namespaced_lease(name, namespace, body, _preload_content=False, _request_timeout=self.t)  # type: ignore[arg-type]


class Elector:
    def __init__(
        self,
        leases: Any,
        namespace: str,
        identity: str,
        *,
        lease_seconds: float = 15.0,
        renew_deadline_seconds: float = 10.0,
        retry_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = LEASE_NAME,
    ) -> None:
        assert lease_seconds > renew_deadline_seconds > retry_seconds > 0
        self.leases, self.namespace, self.identity, self.name = leases, namespace, identity, name
        self.lease_seconds, self.renew_deadline, self.retry = lease_seconds, renew_deadline_seconds, retry_seconds
        self.clock = clock
        self.renewed_at: float | None = None  # our last successful write as holder (our clock)
        self.observed: tuple[str, str] | None = None  # (holder, resourceVersion) last seen
        self.observed_at = 0.0
        self.stop = threading.Event()

    def is_leader(self) -> bool:
        return self.renewed_at is not None and self.clock() - self.renewed_at < self.renew_deadline

    def _spec(self, transitions: int, acquire: str | None) -> dict[str, Any]:
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_seconds),
            "renewTime": _now_micro(),
            "leaseTransitions": transitions,
        }
        if acquire:
            spec["acquireTime"] = acquire
        return spec

    def step(self) -> bool:
        """One attempt to acquire or renew; True when this replica holds the Lease now."""
        now = self.clock()
        try:
            lease = self.leases.get(self.namespace, self.name)
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(0, _now_micro()),
                }
                self.leases.create(self.namespace, body)
                return self._won(now, "created the Lease")
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            rv = str((lease.get("metadata") or {}).get("resourceVersion") or "")
            if (holder, rv) != self.observed:
                self.observed, self.observed_at = (holder, rv), now
            transitions = int(spec.get("leaseTransitions") or 0)
            if holder == self.identity:
                body = {**lease, "spec": self._spec(transitions, spec.get("acquireTime"))}
                self.leases.replace(self.namespace, self.name, body)
                return self._won(now, None)
            duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
            if holder and now - self.observed_at < duration:
                self.renewed_at = None
                return False  # someone else holds it and renews it
            body = {**lease, "spec": self._spec(transitions + 1, _now_micro())}
            self.leases.replace(self.namespace, self.name, body)  # resourceVersion: one winner
            return self._won(now, f"took the Lease over from {holder or 'nobody'}")
        except ApiException as err:
            if err.status != 409:
                log.warning("leader election: %s %s", err.status, err.reason)
            return self.is_leader()
        except (urllib3.exceptions.HTTPError, OSError) as err:
            # the API server unreachable (restarted, network): the thread must live on and retry;
            # leadership lapses by itself after renew_deadline_seconds without a renewal
            log.warning("leader election: API server unreachable: %s", type(err).__name__)
            return self.is_leader()

    def _won(self, now: float, why: str | None) -> bool:
        if why is not None or self.renewed_at is None:
            log.info("leader election: %s is the leader (%s)", self.identity, why or "renewed")
        self.renewed_at = now
        return True

    def run(self) -> None:
        while not self.stop.is_set():
            self.step()
            self.stop.wait(self.retry)

    def start(self) -> Elector:
        threading.Thread(target=self.run, name="leader-election", daemon=True).start()
        return self
