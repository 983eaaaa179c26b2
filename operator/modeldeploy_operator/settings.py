"""The operator's settings, from MODELDEPLOY_OPERATOR_* environment variables (the chart sets them).

Read once by `__main__` at startup; `handlers` and `prom` receive the values. Pure (pydantic-settings).
"""

from __future__ import annotations

import hashlib
import re

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modeldeploy_operator import FINALIZER
from modeldeploy_operator.cost import Prices
from modeldeploy_operator.model import DEFAULT_IMAGE, Config


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELDEPLOY_OPERATOR_", extra="ignore")

    prometheus_url: str = Field(default="http://127.0.0.1:9090", description="Prometheus base URL.")
    prometheus_timeout_seconds: float = Field(default=5.0, gt=0, description="Per-query timeout.")
    prometheus_insecure_skip_verify: bool = Field(default=False, description="Do not verify an https Prometheus.")
    prometheus_bearer_token_file: str = Field(default="", description="Send this file's token to Prometheus.")
    server_image: str = Field(default=DEFAULT_IMAGE, min_length=1)
    namespaces: str = Field(default="", description="Comma-separated namespaces to watch; empty: all.")
    selector: str = Field(
        default="",
        description="Label selector: act only on ModelDeployments matching it (key=value, key, !key; comma = and).",
    )
    tick_seconds: float = Field(default=5.0, gt=0, description="Period of the per-object reconcile timer.")
    metrics_port: int = Field(default=8000, ge=0, le=65535, description="/metrics and /healthz.")
    metrics_bind_address: str = Field(default="0.0.0.0", description="Address of the metrics listener.")
    scale_down_delay_seconds: int = Field(default=30, ge=0)
    drain_seconds: int = Field(
        default=10, ge=0, description="A canary that loses its weight keeps its pods this long (in-flight requests)."
    )
    leader_election_namespace: str = Field(
        default="", description="Hold the Lease modeldeploy-operator in this namespace to act; empty: no election."
    )
    pod_name: str = Field(default="", description="This replica's identity in the Lease (default: host and pid).")
    max_concurrent_canaries: int = Field(
        default=0, ge=0, description="Canaries running at once across all objects (0: no cap); others wait."
    )
    workers: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Threads running ticks at once (kopf's executor).",
    )
    malloc_trim_seconds: float = Field(
        default=10.0, ge=0, description="Return glibc's free heap pages to the kernel this often; 0: never."
    )
    api_timeout_seconds: float = Field(default=10.0, gt=0, description="Timeout of every Kubernetes API call.")
    stale_ticks: int = Field(
        default=10, ge=2, description="/healthz fails when an object has not completed a tick for this many periods."
    )
    cost_refresh_seconds: int = Field(
        default=300,
        ge=60,
        description="status.cost alone (no other status change) is rewritten at most this often; every minute "
        "when the tick writes status anyway.",
    )
    drift_interval_seconds: int = Field(
        default=60,
        ge=0,
        description="How often the stable revision's inputs are compared with spec.model.reference (InputDrift); "
        "0: never.",
    )
    drift_window_seconds: int = Field(
        default=600, ge=10, description="The stable revision's inputs of this many last seconds make one drift check."
    )
    scrape_interval_seconds: float = Field(
        default=2.0, gt=0, description="Prometheus' scrape interval; analysis windows span at least two."
    )
    # Prices of status.cost (a ModelDeployment's spec.cost overrides each): your cloud's on-demand
    # price of one vCPU for an hour and of one GiB of memory for an hour, and the price of 1,000
    # calls of the managed endpoint you would use instead. Defaults: the order of per-pod on-demand prices.
    cpu_core_hour_usd: float = Field(default=0.04, ge=0, description="USD per requested CPU core-hour.")
    memory_gib_hour_usd: float = Field(default=0.005, ge=0, description="USD per requested GiB-hour of memory.")
    managed_per_1k_usd: float = Field(default=0.40, ge=0, description="USD per 1,000 managed-endpoint calls.")

    shadow_key: SecretStr | None = Field(
        default=None,
        description="Key of the shadow-step tokens (HMAC of namespace/name/uid); unset: the key of "
        "shadow_key_secret.",
    )
    shadow_key_secret: str = Field(
        default="",
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$",
        description="<namespace>/<name> of the Secret whose `key` signs the shadow-step tokens, created with a "
        "random key when absent (the chart: modeldeploy-shadow-key in its namespace); empty, and shadow_key unset: "
        "a random key per process, so pods started before an operator restart can no longer be told to shadow.",
    )

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        parse_selector(value)  # ValueError names the term and why
        return value.strip()

    @property
    def selector_terms(self) -> list[tuple[str, str | None, bool]]:
        return parse_selector(self.selector)

    @property
    def shard_suffix(self) -> str:
        """Empty without a selector, else `-` and 8 hex digits of it: names that are each shard's own."""
        return "-" + hashlib.sha256(self.selector.encode()).hexdigest()[:8] if self.selector else ""

    @property
    def lease_name(self) -> str:
        """Each shard (selector) elects its own leader: `modeldeploy-operator`, or with a selector
        `modeldeploy-operator-` and 8 hex digits of it."""
        return "modeldeploy-operator" + self.shard_suffix

    @property
    def finalizer(self) -> str:
        """The finalizer kopf puts on the objects this operator acts on: `modeldeploy.io/finalizer`,
        with a selector `modeldeploy.io/finalizer-` and 8 hex digits of it. Shards need their own:
        kopf removes its finalizer from every object its filters do not match, so with one shared
        name each shard removed what the owning shard had just added, several times a second for
        every object, and most of the owner's status writes failed with 409 (a two-shard rollout
        took minutes per step)."""
        return FINALIZER + self.shard_suffix

    @property
    def namespace_list(self) -> list[str]:
        return [n.strip() for n in self.namespaces.split(",") if n.strip()]

    def prices(self) -> Prices:
        return Prices(self.cpu_core_hour_usd, self.memory_gib_hour_usd, self.managed_per_1k_usd)

    def core_config(self) -> Config:
        return Config(
            image=self.server_image,
            scale_down_delay_seconds=self.scale_down_delay_seconds,
            scrape_interval_seconds=self.scrape_interval_seconds,
            drain_seconds=self.drain_seconds,
            prices=self.prices(),
        )


# a label key: an optional DNS-subdomain prefix and "/", then a name; a value: a name or empty
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_VALUE = re.compile(rf"^({_NAME})?$")


def parse_selector(selector: str) -> list[tuple[str, str | None, bool]]:
    """`key=value,key,!key` -> [(key, value or None, present)]: equality, existence and absence,
    the subset of Kubernetes label selectors that kopf filters and the API server both take.
    Raises ValueError naming the term that is not one of them."""
    terms: list[tuple[str, str | None, bool]] = []
    for raw in selector.split(","):
        term = raw.strip()
        if not term:
            continue
        if "!=" in term or " in " in f" {term} " or " notin " in f" {term} " or "(" in term:
            raise ValueError(f"selector term {term!r}: only key=value, key and !key are supported")
        if term.startswith("!"):
            key, value, present = term[1:].strip(), None, False
        elif "=" in term:
            key, _, value = (part.strip() for part in term.replace("==", "=").partition("="))
            present = True
        else:
            key, value, present = term, None, True
        if not _KEY.match(key):
            raise ValueError(f"selector term {term!r}: {key!r} is not a label key")
        if value is not None and not _VALUE.match(value):
            raise ValueError(f"selector term {term!r}: {value!r} is not a label value")
        terms.append((key, value, present))
    return terms
