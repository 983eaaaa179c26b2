"""The ModelDeployment API (modeldeploy.io/v1alpha1) as pydantic models.

These models are the one source of truth: `modeldeploy_operator.crd` generates the CRD's OpenAPI
schema from them, the operator parses every object it reconciles into them, and the CLI uses them
to read status. Each rule is enforced twice: here (so bad specs fail with a message naming the field
before anything is applied) and, where the API server can enforce it, in the CRD (patterns, ranges,
`x-kubernetes-validations` CEL rules, list-map keys), so `kubectl apply` refuses them too.

Field names are camelCase on the wire (aliases) and snake_case in Python.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

SUPPORTED_SCHEMES = ("file", "http", "https", "s3")
# Formats that execute code when loaded: a digest is mandatory for them.
UNSAFE_FORMATS = ("joblib", "pickle")
EXTENSION_FORMATS = {
    ".joblib": "joblib",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".skops": "skops",
    ".onnx": "onnx",
}
SHA256_PATTERN = r"^[0-9a-f]{64}$"
URI_PATTERN = r"^(file|https?|s3)://.+"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
# The built-in measurements' names: a custom metric with one of them would replace it.
RESERVED_METRIC_NAMES = ("requests", "errors", "error-rate", "latency-p99")

ModelFormat = Literal["joblib", "pickle", "skops", "onnx"]
ModelMethod = Literal["predict", "predict_proba"]
LowTraffic = Literal["extend", "raiseWeight", "hold"]
Weight = Annotated[int, Field(ge=0, le=100)]
PositiveSeconds = Annotated[int, Field(gt=0)]


class _Model(BaseModel):
    """Base: camelCase aliases, unknown fields refused (a misspelt field must not vanish silently)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_assignment=True)


def format_from_uri(uri: str) -> ModelFormat | None:
    """The artifact format implied by the URI's file extension, or None when it implies none."""
    path = uri.split("?", 1)[0].lower()
    for ext, fmt in EXTENSION_FORMATS.items():
        if path.endswith(ext):
            return fmt  # type: ignore[return-value]
    return None


class ReferenceProfile(_Model):
    """A training profile, digest-verified like the artifact."""

    uri: str = Field(
        max_length=2048,
        json_schema_extra={"pattern": URI_PATTERN},
        description="Where the profile JSON is: file://, http://, https:// or s3://.",
    )
    sha256: str = Field(pattern=SHA256_PATTERN, description="SHA-256 of the profile bytes, 64 lowercase hex digits.")

    @field_validator("uri")
    @classmethod
    def _scheme_supported(cls, uri: str) -> str:
        return _check_scheme(uri)


def _check_scheme(uri: str) -> str:
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in SUPPORTED_SCHEMES or not re.match(URI_PATTERN, uri):
        raise ValueError(f"uri {uri!r} has scheme {scheme!r}; supported schemes: {', '.join(SUPPORTED_SCHEMES)}")
    return uri


class ModelRef(_Model):
    """Which artifact to serve and how to call it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.sha256) || (has(self.format) ? !(self.format in ['joblib', 'pickle'])"
                    " : !(self.uri.endsWith('.joblib') || self.uri.endsWith('.pkl')"
                    " || self.uri.endsWith('.pickle')))",
                    "message": "sha256 is required for joblib and pickle artifacts (they run code when loaded)",
                    "fieldPath": ".sha256",
                },
                {
                    "rule": "has(self.format) || self.uri.endsWith('.joblib') || self.uri.endsWith('.pkl')"
                    " || self.uri.endsWith('.pickle') || self.uri.endsWith('.skops') || self.uri.endsWith('.onnx')",
                    "message": "format is required when the uri has no .joblib, .pkl, .pickle, .skops"
                    " or .onnx extension",
                    "fieldPath": ".format",
                },
            ]
        }
    )

    uri: str = Field(
        max_length=2048,
        # enforced by _scheme_supported (with a friendlier message) and by the API server:
        json_schema_extra={"pattern": URI_PATTERN},
        description="Where the artifact is: file://, http://, https:// or s3:// (bucket/key).",
    )
    sha256: str | None = Field(
        default=None,
        pattern=SHA256_PATTERN,
        description="SHA-256 of the artifact bytes, 64 lowercase hex digits; checked before loading. "
        "Required for joblib and pickle.",
    )
    format: ModelFormat | None = Field(
        default=None, description="joblib, pickle, skops or onnx; default from the uri's extension."
    )
    version: str = Field(
        min_length=1, max_length=63, description="Human label of the model version: status, history, metrics."
    )
    method: ModelMethod = Field(default="predict", description="predict or predict_proba.")
    reference: ReferenceProfile | None = Field(
        default=None,
        description="Training profile (`modeldeploy profile`): per-feature bins and proportions, the reference "
        "prediction distribution. Needed by analysis.maxInputDrift.",
    )

    @field_validator("uri")
    @classmethod
    def _scheme_supported(cls, uri: str) -> str:
        return _check_scheme(uri)

    @model_validator(mode="after")
    def _digest_for_unsafe_formats(self) -> ModelRef:
        fmt = self.effective_format
        if fmt is None:
            raise ValueError(
                f"format is required: uri {self.uri!r} has no known extension ({', '.join(EXTENSION_FORMATS)})"
            )
        if fmt in UNSAFE_FORMATS and self.sha256 is None:
            raise ValueError(f"sha256 is required for {fmt} artifacts (they run code when loaded)")
        return self

    @property
    def effective_format(self) -> ModelFormat | None:
        return self.format or format_from_uri(self.uri)


class InputSpec(_Model):
    """One feature of the input contract, in the model's column order."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.min) || !has(self.max) || self.min < self.max",
                    "message": "min must be less than max",
                    "fieldPath": ".min",
                }
            ]
        }
    )

    name: str = Field(min_length=1, max_length=128, pattern=NAME_PATTERN, description="Feature name.")
    min: float | None = Field(default=None, description="Smallest accepted value (inclusive).")
    max: float | None = Field(default=None, description="Largest accepted value (inclusive).")
    null_values: list[float] = Field(
        default_factory=list,
        max_length=32,
        description="Sentinels that mean 'no measurement' (for example -999, -999.25): refused, never predicted.",
    )
    required: bool = Field(default=True, description="A row without this feature is refused.")

    @model_validator(mode="after")
    def _min_below_max(self) -> InputSpec:
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be less than max ({self.max})")
        return self


class ResourceRequirements(_Model):
    """Container resources, as in a Pod spec (quantities as strings, for example '500m', '1Gi')."""

    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


DNS_1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class ArtifactCredentials(_Model):
    """A Secret in the ModelDeployment's namespace whose keys become the server's environment
    (for example AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL)."""

    secret_name: str = Field(min_length=1, max_length=253, pattern=DNS_1123_SUBDOMAIN, description="Secret name.")


class ServingSpec(_Model):
    """How the server pods run. Changing any of this starts a canary, like a model change."""

    image: str | None = Field(default=None, description="Server image; default from the operator's settings.")
    workers: int = Field(default=1, ge=1, le=64, description="Server worker processes per pod.")
    resources: ResourceRequirements | None = Field(default=None, description="Container resources.")
    service_account_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_1123_SUBDOMAIN,
        description="ServiceAccount of the server pods (for cloud workload identity); default: the namespace's.",
    )
    automount_service_account_token: bool = Field(
        default=False,
        description="Mount the ServiceAccount's API token in the server pods (off: the server never "
        "calls the Kubernetes API).",
    )
    artifact_credentials: ArtifactCredentials | None = Field(
        default=None, description="Credentials the server uses to download a private artifact."
    )


class PauseStep(_Model):
    seconds: int | None = Field(
        default=None, ge=0, description="How long to wait; absent: wait for an explicit promote."
    )


class ShadowStep(_Model):
    """Mirror a share of stable's requests to the canary and compare its answers with stable's.

    Users get stable's answers only; the canary carries no weight during the step. The step ends
    when `seconds` are over and the shadow check (analysis.minAgreement, maxMeanAbsDiff) passed."""

    seconds: PositiveSeconds = Field(description="Shortest duration of the step.")
    percent: int = Field(ge=1, le=100, description="Share of stable's answered requests mirrored to the canary.")


_STEP_KEYS = ("setWeight", "pause", "shadow")


class Step(_Model):
    """One rollout step: exactly one of setWeight, pause or shadow."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "[has(self.setWeight), has(self.pause), has(self.shadow)].filter(x, x).size() == 1",
                    "message": "a step must have exactly one of setWeight, pause, shadow",
                }
            ]
        }
    )

    set_weight: Weight | None = Field(default=None, description="Canary traffic percentage, 0-100.")
    pause: PauseStep | None = Field(default=None, description="Wait before the next step.")
    shadow: ShadowStep | None = Field(
        default=None, description="Compare the canary's answers with stable's on mirrored requests; no user weight."
    )

    @model_validator(mode="after")
    def _exactly_one_key(self) -> Step:
        values = (self.set_weight, self.pause, self.shadow)
        present = [k for k, v in zip(_STEP_KEYS, values, strict=True) if v is not None]
        if len(present) != 1:
            got = ", ".join(present) if present else "none"
            raise ValueError(f"a step must have exactly one of setWeight, pause, shadow (got: {got})")
        return self


class CustomMetric(_Model):
    """A PromQL query evaluated for the canary; its value must stay within [min, max]."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.min) || has(self.max)", "message": "a metric needs min or max"},
                {
                    "rule": "!(self.name in " + str(list(RESERVED_METRIC_NAMES)) + ")",
                    "message": "the name is reserved for a built-in measurement",
                    "fieldPath": ".name",
                },
                {
                    "rule": "!has(self.min) || !has(self.max) || self.min < self.max",
                    "message": "min must be less than max",
                    "fieldPath": ".min",
                },
            ]
        }
    )

    name: str = Field(min_length=1, max_length=63, pattern=NAME_PATTERN)
    query: str = Field(
        min_length=1,
        max_length=4096,
        description="PromQL; {{revision}}, {{name}}, {{namespace}} and {{window}} are substituted.",
    )
    min: float | None = None
    max: float | None = None

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_METRIC_NAMES:
            raise ValueError(f"{name!r} is reserved for a built-in measurement ({', '.join(RESERVED_METRIC_NAMES)})")
        return name

    @model_validator(mode="after")
    def _bounds(self) -> CustomMetric:
        if self.min is None and self.max is None:
            raise ValueError("a metric needs min or max")
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be less than max ({self.max})")
        return self


class ShadowAnalysis(_Model):
    log_disagreements: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Log at most this many disagreements (input row and both answers) per canary pod for a "
        "person to read; 0 (default): none, since inputs may be sensitive.",
    )


class AnalysisSpec(_Model):
    """How the canary is judged, every intervalSeconds while it carries weight."""

    interval_seconds: PositiveSeconds = Field(default=30, description="Seconds between checks.")
    min_requests: int = Field(
        default=50, ge=0, description="Fewer canary requests than this in the window: inconclusive, hold."
    )
    failure_limit: int = Field(default=1, ge=0, description="Roll back when more than this many checks have failed.")
    max_error_rate: float = Field(
        default=0.01, ge=0, le=1, description="Largest share of canary requests answered 5xx (4xx are not errors)."
    )
    max_latency_p99_seconds: float | None = Field(
        default=0.5,
        ge=0,
        description="Largest canary p99 latency in seconds (default 0.5); 0: not checked. A null is not enough "
        "on an existing object: kubectl apply sends it as 'remove the field' and the default comes back.",
    )
    metrics: list[CustomMetric] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    # Canary against stable over the same window, judged by the anytime-valid judge (judge.py).
    # Every threshold is off when absent. A threshold of 0 is refused: "no increase at all" can fail
    # a canary but never pass one, so the rollout could only end by rollback or a manual promote.
    confidence: float = Field(
        default=0.95,
        ge=0.5,
        lt=1,
        description="Failed or Passed only when the evidence reaches this confidence, however often the "
        "operator looks (anytime-valid); otherwise Inconclusive.",
    )
    max_error_rate_increase: float | None = Field(
        default=None, gt=0, le=1, description="Largest canary 5xx share minus stable's (same window); absent: off."
    )
    max_latency_p99_ratio: float | None = Field(
        default=None,
        ge=1,
        description="Largest canary p99 over stable p99, answered requests only (histogram buckets); absent: off.",
    )
    max_refusal_rate_increase: float | None = Field(
        default=None, gt=0, le=1, description="Largest canary 422 share minus stable's (same window); absent: off."
    )
    max_prediction_shift: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Largest total-variation distance between canary and stable prediction distributions "
        "(classes, or score/value bins): the share of answers that changed kind; absent: off.",
    )
    max_input_drift: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Largest per-feature total-variation distance of the canary's inputs from the reference "
        "profile (spec.model.reference, required); absent: off.",
    )
    low_traffic: LowTraffic | None = Field(
        default=None,
        description="When a decision needs more time than the step has: extend the step, raiseWeight "
        "(within maxWeight) or hold; absent: report it in status and Events only.",
    )
    max_cost_increase: float | None = Field(
        default=None,
        ge=1,
        le=100,
        description="Largest canary cost per prediction over stable's (mean request seconds x pod price per "
        "worker, same window), for example 1.2; absent: off.",
    )

    # The shadow step's check (`shadow` steps): paired answers of canary and stable on mirrored requests.
    min_agreement: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Smallest share of mirrored rows on which the canary's answer agrees with stable's "
        "(same class; every value within agreementTolerance); judged at `confidence`; absent: off.",
    )
    max_mean_abs_diff: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="Largest mean absolute difference between canary and stable answers on mirrored requests, "
        "in the answers' unit (probabilities, or a regressor's values in any unit; per row the mean over its "
        "output values, each difference capped at 10 x this threshold); absent: off.",
    )
    agreement_tolerance: float = Field(
        default=0.0,
        ge=0,
        description="Numbers (probabilities, regression values) agree when they differ by at most this much.",
    )
    shadow: ShadowAnalysis = Field(
        default_factory=lambda: ShadowAnalysis(), description="What the canary logs during a shadow step."
    )

    @field_validator("metrics")
    @classmethod
    def _unique_metric_names(cls, metrics: list[CustomMetric]) -> list[CustomMetric]:
        _refuse_duplicates([m.name for m in metrics], "metric")
        return metrics


class GatewayAPIRouting(_Model):
    http_route: str = Field(
        min_length=1,
        max_length=253,
        description="Name of the HTTPRoute (same namespace) whose backendRefs list <name>-stable and <name>-canary.",
    )


class TrafficRouting(_Model):
    gateway_api: GatewayAPIRouting | None = Field(
        default=None, alias="gatewayAPI", description="Shift weights in a Gateway API HTTPRoute."
    )


def _default_steps() -> list[Step]:
    return [
        Step(set_weight=10),
        Step(pause=PauseStep(seconds=60)),
        Step(set_weight=50),
        Step(pause=PauseStep(seconds=60)),
    ]


class RolloutSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.steps) || !self.steps.exists(s, has(s.shadow)) || (has(self.analysis)"
                    " && (has(self.analysis.minAgreement) || has(self.analysis.maxMeanAbsDiff)))",
                    "message": "a shadow step needs analysis.minAgreement or analysis.maxMeanAbsDiff (its check)",
                    "fieldPath": ".analysis",
                }
            ]
        }
    )

    steps: list[Step] = Field(
        default_factory=_default_steps, max_length=64, description="Canary steps, in order; then promotion."
    )
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    traffic_routing: TrafficRouting | None = Field(
        default=None, description="Absent: the canary's share is approximated by its replica count."
    )
    progress_deadline_seconds: PositiveSeconds = Field(
        default=600,
        description="A canary not ready, that lost its ready pods, or not judged after its wait, for this many "
        "seconds is rolled back.",
    )

    @model_validator(mode="after")
    def _shadow_steps(self) -> RolloutSpec:
        weighted = False
        for i, step in enumerate(self.steps):
            weighted = weighted or bool(step.set_weight)
            if step.shadow is None:
                continue
            if weighted:
                raise ValueError(
                    f"steps[{i}].shadow: a shadow step must come before the first setWeight above 0 "
                    "(the canary carries no user weight while it is compared)"
                )
            a = self.analysis
            if a.min_agreement is None and a.max_mean_abs_diff is None:
                raise ValueError(
                    f"steps[{i}].shadow needs analysis.minAgreement or analysis.maxMeanAbsDiff: the check that "
                    "ends the step"
                )
        return self


class CostSpec(_Model):
    """Prices for this ModelDeployment's `status.cost`; each one absent uses the operator's setting."""

    cpu_core_hour_usd: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="USD per requested CPU core per hour (your cloud's on-demand vCPU-hour).",
    )
    memory_gib_hour_usd: float | None = Field(
        default=None,
        alias="memoryGiBHourUsd",
        ge=0,
        le=1000,
        description="USD per requested GiB of memory per hour (on-demand GiB-hour).",
    )
    managed_per_1k_usd: float | None = Field(
        default=None,
        alias="managedPer1kUsd",
        ge=0,
        le=100000,
        description="USD per 1,000 calls of the managed endpoint compared against.",
    )


class AutoscalingSpec(_Model):
    """A HorizontalPodAutoscaler on the stable revision's Deployment (the canary is sized from it)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas",
                 "fieldPath": ".minReplicas"},
                {"rule": "has(self.targetCPUUtilizationPercentage) || has(self.targetRequestsPerSecondPerPod)",
                 "message": "autoscaling needs targetCPUUtilizationPercentage or targetRequestsPerSecondPerPod"},
            ]
        }
    )  # fmt: skip

    min_replicas: int = Field(default=1, ge=1, le=100, description="Fewest stable pods.")
    max_replicas: int = Field(ge=1, le=100, description="Most stable pods.")
    target_cpu_utilization_percentage: int | None = Field(
        default=None,
        alias="targetCPUUtilizationPercentage",
        ge=1,
        le=100,
        description="Mean CPU use over the pods' CPU request (needs serving.resources.requests.cpu and the "
        "resource metrics API, e.g. metrics-server).",
    )
    target_requests_per_second_per_pod: float | None = Field(
        default=None,
        gt=0,
        description="Mean requests per second per pod, as the Pods metric modeldeploy_requests_per_second "
        "(needs a custom metrics API adapter serving it from Prometheus).",
    )
    scale_down_stabilization_seconds: int | None = Field(
        default=None,
        ge=0,
        le=3600,
        description="How long the autoscaler keeps the highest recommendation before scaling in "
        "(behavior.scaleDown.stabilizationWindowSeconds; unset: Kubernetes' 300).",
    )

    @model_validator(mode="after")
    def _bounds_and_target(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) must not exceed maxReplicas ({self.max_replicas})")
        if self.target_cpu_utilization_percentage is None and self.target_requests_per_second_per_pod is None:
            raise ValueError("autoscaling needs targetCPUUtilizationPercentage or targetRequestsPerSecondPerPod")
        return self


BATCH_INPUT_PATTERN = r"^(https?|s3)://.+"
BATCH_OUTPUT_PATTERN = r"^s3://[^/]+(/.*)?$"
CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


class _BatchLocation(_Model):
    """Where a run reads or writes; `PATTERN` says which schemes (a pod's own file:// path vanishes with it)."""

    PATTERN: ClassVar[str]
    ROLE: ClassVar[str]
    uri: str

    @field_validator("uri")
    @classmethod
    def _scheme(cls, uri: str) -> str:
        if not re.match(cls.PATTERN, uri):
            raise ValueError(f"uri {uri!r}: batch {cls.ROLE} (a file:// path in the pod vanishes with it)")
        return uri


class BatchInput(_BatchLocation):
    PATTERN = BATCH_INPUT_PATTERN
    ROLE = "input must be s3:// or http(s)://"
    uri: str = Field(
        max_length=2048,
        json_schema_extra={"pattern": BATCH_INPUT_PATTERN},
        description="The rows to score: one CSV (a header names the features) or Parquet file, s3:// or http(s)://.",
    )


class BatchOutput(_BatchLocation):
    PATTERN = BATCH_OUTPUT_PATTERN
    ROLE = "output must be s3://bucket/prefix"
    uri: str = Field(
        max_length=2048,
        json_schema_extra={"pattern": BATCH_OUTPUT_PATTERN},
        description="The prefix the run writes under: s3://bucket/prefix (runs/<job>/..., then _SUCCESS).",
    )


class BatchSpec(_Model):
    """A scheduled scoring run of the stable revision (its artifact, digest, format, method, contract)."""

    name: str = Field(
        min_length=1,
        max_length=20,
        pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        description="Names the CronJob <metadata.name>-<name> (a DNS label, at most 20 characters).",
    )
    schedule: str = Field(
        min_length=1,
        max_length=128,
        description="Cron schedule (5 fields, or @hourly, @daily ...), in the controller manager's time zone.",
    )
    input: BatchInput
    output: BatchOutput
    parallelism: int = Field(default=1, ge=1, le=100, description="Shards: pods of the Indexed Job, one range each.")
    allow_rejects: bool = Field(
        default=False, description="Rows the input contract refuses do not fail the run (they are reported)."
    )
    active_deadline_seconds: int = Field(
        default=3600, gt=0, le=7 * 86400, description="A run still going after this many seconds fails."
    )
    suspend: bool = Field(default=False, description="No new runs are scheduled (a running one finishes).")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str) -> str:
        fields = schedule.split()
        if len(fields) == 1 and fields[0] in CRON_MACROS:
            return schedule
        if len(fields) != 5 or not all(re.fullmatch(r"[0-9*/,\-A-Za-z?]+", f) for f in fields):
            raise ValueError(
                f"schedule {schedule!r} is not a cron schedule: 5 fields (minute hour day-of-month month "
                f"day-of-week) or one of {', '.join(CRON_MACROS)}"
            )
        return schedule


class ModelDeploymentSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.rollout) || !has(self.rollout.analysis)"
                    " || !has(self.rollout.analysis.maxInputDrift) || has(self.model.reference)",
                    "message": "rollout.analysis.maxInputDrift needs model.reference (the training profile)",
                    "fieldPath": ".model.reference",
                },
                {
                    "rule": "!has(self.autoscaling) || !has(self.autoscaling.targetCPUUtilizationPercentage)"
                    " || (has(self.serving) && has(self.serving.resources) && has(self.serving.resources.requests)"
                    " && 'cpu' in self.serving.resources.requests)",
                    "message": "autoscaling.targetCPUUtilizationPercentage needs serving.resources.requests.cpu",
                    "fieldPath": ".autoscaling.targetCPUUtilizationPercentage",
                }
            ]
        }
    )

    model: ModelRef
    inputs: list[InputSpec] = Field(
        default_factory=list,
        max_length=1024,
        description="The input contract, in model column order.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    replicas: int = Field(default=2, ge=1, le=100, description="Server pods of the stable revision.")
    serving: ServingSpec = Field(default_factory=ServingSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    paused: bool = Field(default=False, description="Hold the rollout where it is.")
    cost: CostSpec | None = Field(default=None, description="Price overrides for status.cost.")
    autoscaling: AutoscalingSpec | None = Field(
        default=None, description="Scale the stable revision with a HorizontalPodAutoscaler (replicas is then unused)."
    )
    batch: list[BatchSpec] = Field(
        default_factory=list,
        max_length=16,
        description="Scheduled batch scoring with the stable revision; one CronJob per entry.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @field_validator("batch")
    @classmethod
    def _unique_batch_names(cls, batch: list[BatchSpec]) -> list[BatchSpec]:
        _refuse_duplicates([b.name for b in batch], "batch")
        return batch

    @field_validator("inputs")
    @classmethod
    def _unique_input_names(cls, inputs: list[InputSpec]) -> list[InputSpec]:
        _refuse_duplicates([i.name for i in inputs], "input")
        return inputs

    @model_validator(mode="after")
    def _cpu_target_needs_a_request(self) -> ModelDeploymentSpec:
        a = self.autoscaling
        resources = self.serving.resources
        if a is not None and a.target_cpu_utilization_percentage is not None:
            if resources is None or "cpu" not in resources.requests:
                raise ValueError(
                    f"autoscaling.targetCPUUtilizationPercentage ({a.target_cpu_utilization_percentage}) needs "
                    "serving.resources.requests.cpu (utilization is measured against the request)"
                )
        return self

    @model_validator(mode="after")
    def _drift_needs_reference(self) -> ModelDeploymentSpec:
        drift = self.rollout.analysis.max_input_drift
        if drift is not None and self.model.reference is None:
            raise ValueError(
                f"rollout.analysis.maxInputDrift ({drift:g}) needs model.reference (the training profile to compare"
                " with)"
            )
        return self


def _refuse_duplicates(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            raise ValueError(f"{what} name {name!r} at index {index} is a duplicate; names must be unique")
        seen.add(name)


# ---------------------------------------------------------------------------------------------
# Status: the state machine's memory. An operator restarted mid-rollout resumes from it alone.
# ---------------------------------------------------------------------------------------------

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(_Model):
    """metav1.Condition."""

    type: str
    status: ConditionStatus
    observed_generation: int | None = None
    last_transition_time: str
    reason: str
    message: str = ""


class FeatureDistance(_Model):
    """maxInputDrift: one feature's distance from the reference profile, with its interval."""

    name: str
    value: float = Field(description="Total-variation distance of the feature's binned inputs from training.")
    lower: float = Field(description="Lower bound at analysis.confidence (Bonferroni over features).")
    upper: float = Field(description="Upper bound at analysis.confidence (Bonferroni over features).")


class CheckRecord(_Model):
    """One measurement of one analysis: what was asked, of how much data, and what it said."""

    name: str
    query: str
    window_seconds: int | None = None
    samples: float | None = Field(default=None, description="Requests in the window (n).")
    samples_stable: float | None = Field(default=None, description="Stable's requests in the same window.")
    value: float | None = None
    lower: float | None = Field(default=None, description="Lower bound of the interval at analysis.confidence.")
    upper: float | None = Field(default=None, description="Upper bound of the interval at analysis.confidence.")
    more_requests: int | None = Field(
        default=None, description="Inconclusive: about this many more canary requests would decide."
    )
    threshold: str = ""
    verdict: Literal["Passed", "Failed", "Inconclusive", "Error"]
    message: str = ""
    features: list[FeatureDistance] | None = Field(
        default=None, description="input-drift: every feature's distance and interval, largest first."
    )


class AnalysisRecord(_Model):
    """The last analysis as a decision record."""

    time: str
    revision: str
    step: int | None = None
    weight: int | None = Field(default=None, description="Canary weight while the window was measured.")
    window_seconds: int | None = None
    verdict: Literal["Passed", "Failed", "Inconclusive", "Error"]
    message: str = ""
    checks: list[CheckRecord] = Field(default_factory=list)


class HistoryEntry(_Model):
    revision: str
    version: str
    outcome: str = Field(description="Promoted, RolledBack, Superseded, Aborted, Deployed.")
    time: str
    reason: str = ""


HISTORY_LIMIT = 10


class ControlRequest(BaseModel):
    """A control annotation the operator has acted on, with the value it had (so it acts once)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    annotation: str
    value: str


class CostStatus(_Model):
    """What a prediction costs (`modeldeploy_operator.cost` has the formulas; a month is 730 h)."""

    model_config = ConfigDict(extra="ignore")

    time: str | None = Field(default=None, description="When this was computed.")
    requests_per_day: float | None = Field(
        default=None, description="Stable's inference requests over requestsWindow, scaled to a day."
    )
    requests_window: str | None = Field(default=None, description="The window requestsPerDay was measured over.")
    replicas: int | None = Field(default=None, description="Stable pods priced.")
    monthly_usd: float | None = Field(default=None, description="Stable pods' requested CPU and memory x price, 730 h.")
    per1k_predictions_usd: float | None = Field(
        default=None, alias="per1kPredictionsUsd", description="monthlyUsd per 1,000 requests at the volume."
    )
    managed_monthly_usd: float | None = Field(default=None, description="The same volume at managedPer1kUsd.")
    crossover_requests_per_day: float | None = Field(
        default=None, description="Volume at which pods and managed endpoint cost the same."
    )
    cheaper: Literal["selfHosted", "managed"] | None = None
    reason: str | None = Field(default=None, description="One line: why `cheaper`.")
    canary_per1k_predictions_usd: float | None = Field(
        default=None,
        alias="canaryPer1kPredictionsUsd",
        description="The canary's cost per 1,000 requests beside stable's (by pod time per request).",
    )
    peak_rows_per_second: float | None = Field(default=None, description="Highest 1-minute rate over the window.")
    seconds_per_row: float | None = Field(default=None, description="Measured request time per predicted row.")
    replicas_for_peak: int | None = Field(default=None, description="Pods the peak needs at 70% busy workers.")
    pod_hour_usd: float | None = Field(default=None, description="Price of one stable pod for an hour.")
    workers: int | None = Field(default=None, description="Server workers per stable pod.")
    used_cpu_cores: float | None = Field(
        default=None, description="Stable pods' measured CPU (cAdvisor), cores summed, mean over the window."
    )
    used_memory_gib: float | None = Field(
        default=None, alias="usedMemoryGiB", description="Stable pods' measured working-set memory, GiB summed, mean."
    )
    used_monthly_usd: float | None = Field(
        default=None, description="The measured CPU and memory x price, 730 h (monthlyUsd prices the requests)."
    )


BatchOutcome = Literal["Running", "Succeeded", "Failed"]


class BatchRun(_Model):
    """One Job of a batch entry, from the Job's status and its pods' termination messages."""

    model_config = ConfigDict(extra="ignore")

    job: str
    revision: str | None = Field(default=None, description="The revision the shards scored with (their reports).")
    version: str | None = None
    sha256: str | None = Field(default=None, description="The artifact digest the shards scored with (their reports).")
    start_time: str | None = None
    completion_time: str | None = None
    duration_seconds: float | None = None
    rows: int | None = Field(default=None, description="Rows read by the shards that reported.")
    rejected: int | None = Field(default=None, description="Rows the input contract refused.")
    shards: int | None = None
    shards_succeeded: int | None = None
    outcome: BatchOutcome
    reason: str | None = Field(default=None, description="Why it failed: the Job's reason and a shard's message.")
    cost_usd: float | None = Field(default=None, description="Pod-seconds of the shards x the pod price.")


class BatchStatus(_Model):
    model_config = ConfigDict(extra="ignore")

    name: str
    cron_job: str | None = None
    revision: str | None = Field(default=None, description="The revision the CronJob's next run scores with.")
    last_schedule_time: str | None = None
    last_run: BatchRun | None = None


class ModelDeploymentStatus(_Model):
    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    phase: str | None = Field(default=None, description="Derived, for display.")
    message: str | None = None
    stable_revision: str | None = None
    stable_version: str | None = None
    canary_revision: str | None = None
    canary_version: str | None = None
    current_step: int | None = None
    canary_weight: int | None = None
    step_started_at: str | None = None
    canary_started_at: str | None = None
    failed_checks: int | None = None
    failed_check_at: str | None = Field(
        default=None, description="Time of a Failed check awaiting confirmation (checks come faster until then)."
    )
    failed_revision: str | None = Field(default=None, description="Rolled back; not retried until changed.")
    failed_version: str | None = None
    scale_down_revision: str | None = Field(
        default=None, description="The previous stable revision, kept running until scaleDownAt (cheap rollback)."
    )
    scale_down_at: str | None = None
    promote_requested: bool | None = Field(
        default=None, description="A human asked to promote the running canary (skips the analysis gate)."
    )
    prometheus_unavailable_since: str | None = Field(
        default=None, description="Start of the current streak of failed Prometheus queries (hold, not fail)."
    )
    draining_revision: str | None = Field(
        default=None,
        description="A canary that carried weight until just now (rolled back or superseded): kept running, and "
        "selected by <name>-canary while no new canary is ready, until drainingUntil (in-flight requests).",
    )
    draining_until: str | None = None
    canary_unready_since: str | None = Field(
        default=None, description="The canary lost the ready pods its weight needs at this time (weight held at 0)."
    )
    control_requests: list[ControlRequest] = Field(
        default_factory=list,
        description="Control annotations already acted on, with their values: a value is acted on once.",
    )
    conditions: list[Condition] = Field(default_factory=list)
    last_analysis: AnalysisRecord | None = None
    cost: CostStatus | None = None
    autoscaler: str | None = Field(default=None, description="The HorizontalPodAutoscaler the operator applied.")
    batch: list[BatchStatus] = Field(default_factory=list, description="Per spec.batch entry: its last run.")
    history: list[HistoryEntry] = Field(default_factory=list, max_length=HISTORY_LIMIT)


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = ""
    namespace: str | None = None
    generation: int | None = None
    uid: str | None = None
    annotations: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)


class ModelDeployment(_Model):
    """A whole object as the API server returns it."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["modeldeploy.io/v1alpha1"] = "modeldeploy.io/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)


# metadata.name: the Services `<name>-stable` and `<name>-canary` must be DNS-1035 labels of at most
# 63 characters, and `<name>` is a label value; 52 leaves room for every child's suffix.
NAME_MAX = 52
DNS_1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_RULE = {
    "rule": f"self.metadata.name.size() <= {NAME_MAX} && self.metadata.name.matches('{DNS_1035}')",
    "message": f"metadata.name must be a DNS-1035 label (lower-case letters, digits, '-', starting with a letter) "
    f"of at most {NAME_MAX} characters: it names the ModelDeployment's Services",
}


def name_problem(name: str) -> str | None:
    """Why a ModelDeployment of this name cannot have its children, or None (the CRD refuses it too)."""
    if len(name) > NAME_MAX:
        return f"metadata.name: {len(name)} characters; at most {NAME_MAX} (it names the Services <name>-canary ...)"
    if not re.match(DNS_1035, name):
        return (
            f"metadata.name: {name!r} must be a DNS-1035 label (lower-case letters, digits and '-', starting with "
            "a letter): it names the Services <name>-stable and <name>-canary"
        )
    return None


class SpecError(ValueError):
    """A spec that breaks the API's rules; the message names every offending field."""


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + part
    return out


def describe_errors(err: ValidationError, prefix: str = "spec") -> str:
    """One line per problem: `spec.rollout.steps[1].setWeight: Input should be less than or equal to 100 (got 150)`."""
    lines = []
    for e in err.errors():
        loc = _loc(tuple(e["loc"]))
        where = f"{prefix}.{loc}" if loc else prefix
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"{where}: {msg}{shown}")
    return "; ".join(lines)


def parse_spec(raw: dict[str, Any]) -> ModelDeploymentSpec:
    """Validate a spec from the API server or a file; raise SpecError naming each bad field."""
    try:
        return ModelDeploymentSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(describe_errors(err)) from None
