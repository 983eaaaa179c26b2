"""Plain data passed into and out of the pure core: observations, configuration, the decision.

Built by the kopf shell (`observe`) from the API server and Prometheus, and by the tests from
fakes; consumed by `core.decide`. Dataclasses, frozen but for `Decision` (which the tick fills
rung by rung); no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from modeldeploy_operator.analysis import AnalysisPlan, QueryResult
from modeldeploy_operator.api import AnalysisRecord, ModelDeploymentStatus
from modeldeploy_operator.cost import DEFAULT_PRICES, Prices

DEFAULT_IMAGE = "modeldeploy/modeldeploy:0.1.0"


@dataclass(frozen=True)
class PodState:
    name: str
    ready: bool
    restart_count: int = 0
    waiting_reason: str | None = None
    waiting_message: str | None = None
    terminated_reason: str | None = None
    terminated_message: str | None = None
    exit_code: int | None = None
    phase: str | None = None
    ip: str | None = None  # status.podIP (shadow steps' control calls and mirroring targets)

    def refusal(self) -> str | None:
        """The server's one line when it refused its artifact (exit code 2), else None."""
        if self.exit_code != 2:
            return None
        return self.terminated_message or f"pod {self.name}: the server refused to start (exit code 2)"

    def problem(self) -> str | None:
        """One line on why the pod is not ready, or None when nothing is known."""
        if self.ready:
            return None
        parts: list[str] = []
        if self.waiting_reason:
            parts.append(
                f"waiting: {self.waiting_reason}" + (f" ({self.waiting_message})" if self.waiting_message else "")
            )
        if self.terminated_reason or self.exit_code is not None:
            what = self.terminated_reason or "Terminated"
            code = f" exit code {self.exit_code}" if self.exit_code is not None else ""
            msg = f" ({self.terminated_message})" if self.terminated_message else ""
            parts.append(f"last terminated: {what}{code}{msg}")
        if self.restart_count:
            parts.append(f"restarts {self.restart_count}")
        if not parts:
            parts.append(f"not ready (phase {self.phase or 'unknown'})")
        return f"pod {self.name}: " + ", ".join(parts)


@dataclass(frozen=True)
class RevisionState:
    """What the API server says about one revision's Deployment and pods."""

    ready_replicas: int = 0
    pods: tuple[PodState, ...] = ()

    def refusal(self) -> str | None:
        """The first refusal line any pod of this revision terminated with (final for the revision)."""
        return next((line for line in (p.refusal() for p in self.pods) if line), None)

    def problems(self) -> str:
        lines = [p for p in (pod.problem() for pod in self.pods) if p]
        return "; ".join(lines[:3]) if lines else "no pod reported a reason"


@dataclass(frozen=True)
class RouteState:
    found: bool
    message: str = ""


@dataclass(frozen=True)
class Observed:
    revisions: Mapping[str, RevisionState] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    route: RouteState | None = None
    analysis: tuple[AnalysisPlan, Mapping[str, QueryResult]] | None = None
    may_start_canary: bool = True  # False while the operator's cap on concurrent canaries is reached
    # revisions whose Deployment this object owns (None: not known; the fakes of the core's tests)
    owned_revisions: frozenset[str] | None = None
    # each revision's Deployment spec.replicas as observed (an autoscaler sets the stable one)
    replicas: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Meta:
    name: str
    namespace: str
    uid: str = ""
    generation: int | None = None


@dataclass(frozen=True)
class Config:
    image: str = DEFAULT_IMAGE
    scale_down_delay_seconds: int = 30
    scrape_interval_seconds: float = 2.0
    drain_seconds: int = 10
    prices: Prices = DEFAULT_PRICES  # of the maxCostIncrease gate (operator settings)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class RouteWeights:
    http_route: str
    stable_service: str
    canary_service: str
    stable_weight: int
    canary_weight: int


@dataclass(frozen=True)
class ShadowTarget:
    """A shadow step in progress: what the shell tells the stable pods (re-sent every tick, with an expiry)."""

    stable_revision: str
    canary_revision: str
    canary_service: str  # <name>-canary: the mirrored requests' destination
    percent: int
    tolerance: float
    log_disagreements: int
    diff_cap: float = 1.0  # each value's absolute difference counts at most this much (shadow.diff_cap)


@dataclass
class Decision:
    status: ModelDeploymentStatus
    # Full manifests (only the desired revision's: its template comes from the current spec).
    deployments: list[dict[str, Any]] = field(default_factory=list)
    # Other revisions that should still exist: Deployment name -> replicas (scaled, never rebuilt).
    scales: dict[str, int] = field(default_factory=dict)
    services: list[dict[str, Any]] = field(default_factory=list)
    # Deployments kept exactly as they are (a draining canary): neither scaled nor pruned.
    keep: list[str] = field(default_factory=list)
    route: RouteWeights | None = None
    events: list[Event] = field(default_factory=list)
    clear_annotations: list[str] = field(default_factory=list)
    analysis: AnalysisRecord | None = None
    shadow: ShadowTarget | None = None  # None: no shadow step runs (stable pods stop mirroring)
    outcomes: list[str] = field(default_factory=list)
    apply_children: bool = True


def fmt_time(t: datetime) -> str:
    """RFC 3339, whole seconds, UTC (metav1.Time)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def seconds_since(s: str | None, now: datetime) -> float:
    """Seconds from a stored time to now (whole-second stored times; 0 when unset)."""
    if s is None:
        return 0.0
    return (now.replace(microsecond=0) - parse_time(s)).total_seconds()


def later(now: datetime, seconds: float) -> str:
    return fmt_time(now.replace(microsecond=0) + timedelta(seconds=seconds))
