"""The server's settings: `MODELDEPLOY_*` environment variables, the same names as CLI flags.

Owned here: the `Settings` model (pydantic-settings) and `InputSpec`, the server's own copy of one
`spec.inputs` entry (camelCase on the wire, as in the CRD; the server must not import the
operator). Called by `__main__` (flags are exported to the environment so that worker processes
see them), `app.create_app`, `score` and the tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "MODELDEPLOY_"
ModelFormat = Literal["joblib", "pickle", "skops", "onnx"]
EXTENSION_FORMATS: dict[str, ModelFormat] = {
    ".joblib": "joblib",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".skops": "skops",
    ".onnx": "onnx",
}


class InputSpec(BaseModel):
    """One feature of the input contract, in the model's column order."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128)
    # finite: a NaN bound would switch the range check off (no value compares below NaN)
    min: float | None = Field(default=None, allow_inf_nan=False)
    max: float | None = Field(default=None, allow_inf_nan=False)
    null_values: tuple[float, ...] = ()
    required: bool = True

    @model_validator(mode="after")
    def _min_below_max(self) -> InputSpec:
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"input {self.name!r}: min ({self.min}) must be less than max ({self.max})")
        return self


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "modeldeploy" / "artifacts"


class Settings(BaseSettings):
    """Everything the server reads from its environment (flag `--model-uri` = `MODELDEPLOY_MODEL_URI`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", protected_namespaces=())

    model_name: str = Field(default="model", description="The ModelDeployment name; the `model` metric label.")
    model_uri: str = Field(default="", description="file://, http(s):// or s3:// URI of the artifact.")
    model_sha256: str | None = Field(default=None, description="Expected SHA-256 of the artifact (64 hex).")
    model_format: ModelFormat | None = Field(default=None, description="joblib|pickle|skops|onnx; default: ext.")
    model_version: str = Field(default="0", description="Human version label; the `version` metric label.")
    model_method: Literal["predict", "predict_proba"] = "predict"
    model_revision: str = Field(default="", description="Revision hash; the `revision` metric label.")
    inputs: list[InputSpec] = Field(default_factory=list, description="JSON: the spec.inputs list.")
    reference_uri: str = Field(default="", description="URI of the reference profile (`modeldeploy profile`).")
    reference_sha256: str | None = Field(default=None, description="Expected SHA-256 of the reference profile.")

    @field_validator("inputs")
    @classmethod
    def _unique_input_names(cls, inputs: list[InputSpec]) -> list[InputSpec]:
        seen: set[str] = set()
        for spec in inputs:
            if spec.name in seen:
                raise ValueError(f"input {spec.name!r} is declared twice (a row keyed by name could give only one)")
            seen.add(spec.name)
        return inputs

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    pod_name: str = ""
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Larger bodies get 413.")
    max_batch_rows: int = Field(default=256, ge=1, description="Upper bound of one micro-batch.")
    max_request_rows: int = Field(default=100_000, ge=1, description="More rows in one request get 413.")
    compile: Literal["auto", "off"] = Field(default="auto", description="auto: verified fast paths; off: sklearn.")
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    s3_endpoint: str | None = Field(default=None, description="S3 endpoint; else AWS_ENDPOINT_URL, else AWS.")
    allow_version_mismatch: bool = False
    trusted_types: list[str] = Field(default_factory=list, description="Extra skops types to trust.")
    fetch_timeout_seconds: float = Field(default=60.0, gt=0, description="Deadline of the whole artifact download.")
    max_artifact_bytes: int = Field(default=4 << 30, ge=1, description="Larger artifacts are refused (4 GiB).")
    graceful_timeout_seconds: float = Field(default=30.0, ge=0)
    keep_alive_seconds: float = Field(
        default=3700.0,
        gt=0,
        le=86_400,
        description="An idle keep-alive connection is closed after this long. Longer than the idle timeouts of the "
        "proxies in front (Traefik 90 s, nginx 60 s, Envoy 1 h): a proxy that sends a request on a connection the "
        "server is closing answers 502.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(default=False, description="Also log successful requests (refusals always are).")
    shadow_token: SecretStr | None = Field(
        default=None, description="The ModelDeployment's token for the shadow endpoints; absent: they refuse (403)."
    )
    shadow_queue: int = Field(default=1000, ge=1, le=100_000, description="Mirrored requests waiting; more: dropped.")
    shadow_timeout_seconds: float = Field(default=2.0, gt=0, le=60, description="Deadline of one mirrored request.")

    @field_validator("model_sha256", "reference_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value == "":
            return None
        digest = value.strip().lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{ENV_PREFIX}{str(info.field_name).upper()} must be 64 hex digits, got {value!r}")
        return digest

    @property
    def effective_format(self) -> ModelFormat | None:
        """The declared format, else the one implied by the URI's extension."""
        if self.model_format is not None:
            return self.model_format
        path = self.model_uri.split("?", 1)[0].lower()
        for ext, fmt in EXTENSION_FORMATS.items():
            if path.endswith(ext):
                return fmt
        return None
