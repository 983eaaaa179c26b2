"""The Prometheus client reads the environment once, at start, and still honours it.

requests' Session with `trust_env` looks up the proxy variables, the CA bundle variables and
`~/.netrc` for every request (a tenth of the operator's CPU at 1,000 objects); the operator takes
the same settings once. Real HTTP on loopback: a server that answers as Prometheus does, and one
that answers as an HTTP proxy does (it receives the absolute URL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import requests.sessions

from modeldeploy_operator.prom import Prometheus
from tests.operator.loopback_prom import PromHandler, serving


@pytest.fixture
def server() -> Iterator[str]:
    PromHandler.mode = "quarter"
    with serving() as url:
        yield url


def test_queries_do_not_look_up_netrc_or_proxies_each_time(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    prom = Prometheus(server, timeout_seconds=2.0)
    calls: list[str] = []
    for name in ("get_netrc_auth", "get_environ_proxies"):
        real = getattr(requests.sessions, name)
        monkeypatch.setattr(
            requests.sessions, name, lambda *a, _n=name, _r=real, **k: (calls.append(_n), _r(*a, **k))[1]
        )
    answers = [prom.query("up", datetime.now(UTC)).value for _ in range(5)]
    assert answers == [0.25] * 5
    assert calls == [], f"per-query environment look-ups: {calls}"


def test_a_proxy_from_the_environment_still_carries_the_queries(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the proxy is the loopback server: it receives the absolute URL of a host that resolves nowhere
    monkeypatch.setenv("HTTP_PROXY", server)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    prom = Prometheus("http://prometheus.invalid:9090", timeout_seconds=2.0)
    assert prom.query("up", datetime.now(UTC)).value == 0.25
    assert PromHandler.seen and PromHandler.seen[0].startswith("http://prometheus.invalid:9090/api/v1/query?"), (
        PromHandler.seen
    )


def test_no_proxy_and_the_ca_bundle_from_the_environment_still_apply(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "prometheus.monitoring.svc")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/private-ca.pem")
    direct = Prometheus("https://prometheus.monitoring.svc:9090", timeout_seconds=2.0).client._session
    assert direct.verify == "/etc/ssl/private-ca.pem"
    assert not direct.proxies.get("https")
    proxied = Prometheus("https://prometheus.example.invalid", timeout_seconds=2.0).client._session
    assert proxied.proxies.get("https") == "http://127.0.0.1:9"
    skipped = Prometheus("https://prometheus.example.invalid", 2.0, insecure_skip_verify=True).client._session
    assert skipped.verify is False
