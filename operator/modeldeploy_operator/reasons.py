"""Every name the operator writes for humans and tools: Event reasons, condition types and reasons, phases.

One module so that `kubectl describe`, alerts (PrometheusRule on Events/metrics), the CLI and the
tests agree on spelling. CamelCase, as in metav1.Condition. Used by `core` (which decides) and by
the kopf shell (which posts what `core` decided).
"""

from __future__ import annotations

from typing import Final

# Annotations a human (or the CLI) sets on a ModelDeployment; consumed and cleared by the operator.
ANNOTATION_PROMOTE: Final = "modeldeploy.io/promote"
ANNOTATION_ABORT: Final = "modeldeploy.io/abort"
ANNOTATION_RETRY: Final = "modeldeploy.io/retry"
CONTROL_ANNOTATIONS: Final = (ANNOTATION_PROMOTE, ANNOTATION_ABORT, ANNOTATION_RETRY)

# Condition types (metav1.Condition).
READY: Final = "Ready"
PROGRESSING: Final = "Progressing"
DEGRADED: Final = "Degraded"
INPUT_DRIFT: Final = "InputDrift"  # the stable revision's inputs against its reference profile (driftwatch)
# True while the current step's checks are expected to decide later than the step allows (analysis.lowTraffic).
LOW_TRAFFIC: Final = "LowTraffic"

# Phases (derived, for display: `kubectl get mdep`).
PHASE_DEPLOYING: Final = "Deploying"
PHASE_HEALTHY: Final = "Healthy"
PHASE_PROGRESSING: Final = "Progressing"
PHASE_PAUSED: Final = "Paused"
PHASE_PROMOTING: Final = "Promoting"
PHASE_ROLLED_BACK: Final = "RolledBack"
PHASE_ABORTED: Final = "Aborted"
PHASE_DEGRADED: Final = "Degraded"
PHASE_INVALID: Final = "Invalid"

# Event reasons (and condition reasons where the same word fits).
INVALID_SPEC: Final = "InvalidSpec"
STATUS_UNREADABLE: Final = "StatusUnreadable"
STABLE_DEPLOYING: Final = "StableDeploying"
STABLE_DEPLOYED: Final = "StableDeployed"
STABLE_AVAILABLE: Final = "StableAvailable"
STABLE_UNAVAILABLE: Final = "StableUnavailable"
CANARY_STARTED: Final = "CanaryStarted"
CANARY_WAITING_FOR_READY: Final = "CanaryWaitingForReady"
CANARY_READY: Final = "CanaryReady"
CANARY_UNREADY: Final = "CanaryUnready"
ARTIFACT_REFUSED: Final = "ArtifactRefused"
REQUEST_IGNORED: Final = "RequestIgnored"
APPLY_FAILED: Final = "ApplyFailed"
STABLE_ADOPTED: Final = "StableAdopted"
CANARY_QUEUED: Final = "CanaryQueued"
CANARY_SUPERSEDED: Final = "CanarySuperseded"
CANARY_CANCELLED: Final = "CanaryCancelled"
WEIGHT_CHANGED: Final = "WeightChanged"
STEP_STARTED: Final = "StepStarted"
STEP_PAUSED: Final = "StepPaused"
SHADOWING: Final = "Shadowing"
WAITING_FOR_ANALYSIS: Final = "WaitingForAnalysis"
ANALYSIS_PASSED: Final = "AnalysisPassed"
ANALYSIS_FAILED: Final = "AnalysisFailed"
ANALYSIS_INCONCLUSIVE: Final = "AnalysisInconclusive"
PROMETHEUS_UNAVAILABLE: Final = "PrometheusUnavailable"
PROMETHEUS_AVAILABLE: Final = "PrometheusAvailable"
PROGRESS_DEADLINE_EXCEEDED: Final = "ProgressDeadlineExceeded"
ROLLED_BACK: Final = "RolledBack"
ABORTED: Final = "Aborted"
PROMOTED: Final = "Promoted"
PROMOTE_REQUESTED: Final = "PromoteRequested"
RETRY_REQUESTED: Final = "RetryRequested"
OLD_REVISION_SCALED_DOWN: Final = "OldRevisionScaledDown"
ROLLOUT_PAUSED: Final = "RolloutPaused"
ROLLOUT_COMPLETE: Final = "RolloutComplete"
ROUTE_NOT_FOUND: Final = "HTTPRouteNotFound"
AS_EXPECTED: Final = "AsExpected"
INPUT_DRIFTED: Final = "InputDrifted"  # InputDrift=True, and its Event (Warning)
NO_INPUT_DRIFT: Final = "NoInputDrift"  # InputDrift=False
INPUT_DRIFT_RECOVERED: Final = "InputDriftRecovered"  # the Event of InputDrift True -> False

# Reasons of the LowTraffic condition: what analysis.lowTraffic does about it (the Event's reason is LowTraffic).
LOW_TRAFFIC_REPORTED: Final = "Reported"  # lowTraffic unset: said, nothing else changes
LOW_TRAFFIC_EXTENDED: Final = "StepExtended"  # extend: the step (and its checks' window) grows to the deadline
LOW_TRAFFIC_RAISED: Final = "WeightRaised"  # raiseWeight: the canary's share grows toward the next step's weight
LOW_TRAFFIC_HELD: Final = "Held"  # hold: no progress deadline, waits for evidence or the promote annotation

# History outcomes.
OUTCOME_DEPLOYED: Final = "Deployed"
OUTCOME_PROMOTED: Final = "Promoted"
OUTCOME_ROLLED_BACK: Final = "RolledBack"
OUTCOME_ABORTED: Final = "Aborted"
OUTCOME_SUPERSEDED: Final = "Superseded"
OUTCOME_CANCELLED: Final = "Cancelled"
