"""The operator's shadow-step key: every operator process (a restart, an upgrade, a new leader) must
derive the same tokens, or the stable pods it did not start refuse its control calls and a shadow
step ends Inconclusive and rolls a good canary back. Nobody has to create the key: the operator
creates the Secret with a random key, reads it at every start after, and never logs it."""

from __future__ import annotations

import base64
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from modeldeploy_operator import shadowctl
from modeldeploy_operator.model import Meta

REF = "modeldeploy-system/modeldeploy-shadow-key"
META = Meta("iris", "ml", "uid-1")


class FakeCore:
    """CoreV1Api's two Secret calls the key needs, over a dict (the API server's answers: 404, 409, data base64)."""

    def __init__(self, forbidden: bool = False) -> None:
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.created: list[dict[str, Any]] = []
        self.forbidden = forbidden
        self.race: dict[str, str] | None = None  # another process creates the Secret between our read and create

    def read_namespaced_secret(self, name: str, namespace: str, **_: Any) -> Any:
        if self.forbidden:
            raise ApiException(status=403, reason="Forbidden")
        if (namespace, name) not in self.secrets:
            raise ApiException(status=404, reason="Not Found")
        return SimpleNamespace(data=self.secrets[(namespace, name)])

    def create_namespaced_secret(self, namespace: str, body: dict[str, Any], **_: Any) -> None:
        if self.race is not None:
            self.secrets[(namespace, body["metadata"]["name"])], self.race = self.race, None
        key = (namespace, body["metadata"]["name"])
        if key in self.secrets:
            raise ApiException(status=409, reason="Conflict")
        self.created.append(body)
        self.secrets[key] = {k: base64.b64encode(v.encode()).decode() for k, v in body["stringData"].items()}


def test_without_a_key_the_operator_creates_a_random_one_and_every_later_process_uses_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = FakeCore()
    with caplog.at_level(logging.DEBUG):
        first = shadowctl.resolve_key("", REF, core)
        after_restart = shadowctl.resolve_key("", REF, core)
    assert first == after_restart  # a restarted operator's tokens are the ones the pods hold
    assert shadowctl.token(first, META) == shadowctl.token(after_restart, META)
    (created,) = core.created
    assert created["metadata"] == {"name": "modeldeploy-shadow-key", "namespace": "modeldeploy-system",
                                   "labels": {"app.kubernetes.io/managed-by": "modeldeploy"}}  # fmt: skip
    assert len(first) >= 43 and first.decode().isascii()  # token_urlsafe(32): 256 random bits
    assert first.decode() not in caplog.text and shadowctl.token(first, META) not in caplog.text
    assert "created Secret modeldeploy-system/modeldeploy-shadow-key" in caplog.text
    # another cluster (another Secret store): another key, nothing fixed or guessable
    assert shadowctl.resolve_key("", REF, FakeCore()) != first


def test_a_key_the_user_created_is_used_and_never_replaced() -> None:
    core = FakeCore()
    core.secrets[("modeldeploy-system", "modeldeploy-shadow-key")] = {"key": base64.b64encode(b"chosen").decode()}
    assert shadowctl.resolve_key("", REF, core) == b"chosen" and core.created == []
    # the same key given as MODELDEPLOY_OPERATOR_SHADOW_KEY (a secretKeyRef) gives the same tokens
    assert shadowctl.resolve_key("chosen", "", None) == b"chosen"


def test_two_processes_starting_at_once_agree_on_the_key() -> None:
    core = FakeCore()
    core.race = {"key": base64.b64encode(b"the other process' key").decode()}
    assert shadowctl.resolve_key("", REF, core) == b"the other process' key" and core.created == []


@pytest.mark.parametrize(
    ("core", "why"),
    [
        (FakeCore(forbidden=True), "403 Forbidden"),
        (SimpleNamespace(read_namespaced_secret=lambda *a, **k: SimpleNamespace(data={"other": "eA=="})),
         "has no data.key"),
    ],
)  # fmt: skip
def test_an_unreadable_key_falls_back_to_a_random_one_and_says_why(
    core: Any, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        key = shadowctl.resolve_key("", REF, core)
    assert len(key) == 32 and why in caplog.text and "random key of this process" in caplog.text
