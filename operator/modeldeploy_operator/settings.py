"""The operator's settings, from MODELDEPLOY_OPERATOR_* environment variables (the chart sets them).

Read once by `__main__` at startup; `handlers` and `prom` receive the values. Pure (pydantic-settings).
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    api_timeout_seconds: float = Field(default=10.0, gt=0, description="Timeout of every Kubernetes API call.")
    stale_ticks: int = Field(
        default=10, ge=2, description="/healthz fails when an object has not completed a tick for this many periods."
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
