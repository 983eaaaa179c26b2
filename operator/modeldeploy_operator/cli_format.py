"""Pure rendering and reading of a ModelDeployment for the `modeldeploy` CLI (no Kubernetes I/O).

`cli.py` fetches objects and calls these functions; tests call them with plain dicts. Status is
parsed with the API's pydantic models (`ModelDeploymentStatus`), so the CLI reads exactly the
fields the operator writes.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from modeldeploy_operator import reasons
from modeldeploy_operator.api import AnalysisRecord, CostStatus, ModelDeploymentStatus, ModelRef, describe_errors
from modeldeploy_operator.children import LABEL_REVISION

PHASE_HEALTHY = reasons.PHASE_HEALTHY
# Phases after which a rollout will not become healthy without a new spec or a human.
FAILED_PHASES = frozenset(
    {reasons.PHASE_ROLLED_BACK, reasons.PHASE_ABORTED, reasons.PHASE_DEGRADED, reasons.PHASE_INVALID}
)
# Annotation written by `undo`, read by the next `undo` (the model to go back to).
ANNOTATION_PREVIOUS_MODEL = "modeldeploy.io/previous-model"
MODEL_KEYS = ("uri", "sha256", "format", "version", "method")


class CliError(Exception):
    """A failure to report on one line, with the process exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def parse_status(obj: dict[str, Any]) -> ModelDeploymentStatus:
    try:
        return ModelDeploymentStatus.model_validate(obj.get("status") or {})
    except ValidationError as err:
        raise CliError(f"cannot read the status: {describe_errors(err, 'status')}", 5) from None


def verdict(obj: dict[str, Any]) -> str:
    """'healthy', 'failed' or 'progressing': has the rollout of the *current* spec ended, and how."""
    status = parse_status(obj)
    generation = obj.get("metadata", {}).get("generation")
    seen_latest = generation is None or status.observed_generation == generation
    if not seen_latest:
        return "progressing"
    if status.phase == PHASE_HEALTHY and status.canary_revision is None:
        return "healthy"
    if status.phase in FAILED_PHASES:
        return "failed"
    return "progressing"


def _rev(version: str | None, revision: str | None) -> str:
    if version is None and revision is None:
        return "-"
    return f"{version or '?'} (revision {revision or '?'})"


def _step_text(obj: dict[str, Any], status: ModelDeploymentStatus) -> str:
    if status.current_step is None:
        return "-"
    steps = obj.get("spec", {}).get("rollout", {}).get("steps") or []
    index = status.current_step
    if 0 <= index < len(steps):
        what = json.dumps(steps[index], separators=(", ", ": "))
        return f"{index + 1}/{len(steps)} {what}"
    return f"{index + 1}/{len(steps)}" if steps else str(index + 1)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]


def _analysis_lines(last: AnalysisRecord) -> list[str]:
    weight = getattr(last, "weight", None)  # recorded by newer operators
    where = [f"step {last.step + 1}" if last.step is not None else "", f"weight {weight}%" if weight else ""]
    context = ", ".join(w for w in where if w)
    head = f"{last.verdict} at {last.time} on revision {last.revision}" + (f" ({context})" if context else "")
    lines = [f"Last analysis: {head}"]
    if last.message:
        lines.append(f"  {last.message}")
    if last.checks:
        rows = [
            [
                c.name,
                _num(c.value),
                c.threshold or "-",
                _num(c.samples),
                f"{c.window_seconds}s" if c.window_seconds else "-",
                c.verdict,
                c.message,
            ]
            for c in last.checks
        ]
        lines += table(["CHECK", "VALUE", "THRESHOLD", "N", "WINDOW", "VERDICT", "MESSAGE"], rows)
    return lines


def history_lines(status: ModelDeploymentStatus) -> list[str]:
    if not status.history:
        return ["  (no history yet)"]
    rows = [[h.time, h.version, h.revision, h.outcome, h.reason] for h in reversed(status.history)]
    return table(["TIME", "VERSION", "REVISION", "OUTCOME", "REASON"], rows)


def render_status(obj: dict[str, Any]) -> str:
    """The `modeldeploy status` view of one ModelDeployment object (as the API server returns it)."""
    meta = obj.get("metadata", {})
    status = parse_status(obj)
    model = obj.get("spec", {}).get("model", {})
    phase = status.phase or "Pending (not reconciled yet)"
    observed = status.observed_generation
    lines = [
        f"Name:       {meta.get('name', '?')}",
        f"Namespace:  {meta.get('namespace', '?')}",
        f"Model:      {model.get('version', '?')} {model.get('uri', '')}",
        f"Phase:      {phase}" + (f": {status.message}" if status.message else ""),
    ]
    if observed is not None and meta.get("generation") not in (None, observed):
        lines.append(f"            (status is for generation {observed}; the spec is at {meta['generation']})")
    lines += [
        f"Stable:     {_rev(status.stable_version, status.stable_revision)}",
        f"Canary:     {_rev(status.canary_version, status.canary_revision)}"
        + (f"  weight {status.canary_weight}%" if status.canary_revision and status.canary_weight is not None else ""),
        f"Step:       {_step_text(obj, status) if status.canary_revision else '-'}",
    ]
    if status.failed_revision:
        failed = _rev(getattr(status, "failed_version", None), status.failed_revision)
        lines.append(f"Failed:     {failed} (not retried until changed)")
    conditions = [[c.type, c.status, c.reason, c.message] for c in status.conditions]
    if conditions:
        lines += ["Conditions:", *table(["TYPE", "STATUS", "REASON", "MESSAGE"], conditions)]
    if status.last_analysis is not None:
        lines += _analysis_lines(status.last_analysis)
    lines += ["History:", *history_lines(status)]
    return "\n".join(lines)


def _full_model(model: dict[str, Any]) -> dict[str, Any]:
    """spec.model with every key present (None where unset), so a merge patch removes stale keys."""
    return {key: model.get(key) for key in MODEL_KEYS}


SERVER_ENV_KEYS = {f"MODELDEPLOY_MODEL_{key.upper()}": key for key in MODEL_KEYS}


def revision_models(
    obj: dict[str, Any], deployments: list[dict[str, Any]], skip_failed: bool = False
) -> list[dict[str, Any]]:
    """spec.model of every revision still running, read back from its Deployment's server env.

    The operator renders MODELDEPLOY_MODEL_{URI,SHA256,FORMAT,VERSION,METHOD} into each revision's
    pod template, so the stable revision that keeps serving after a rollback is the model `undo`
    restores. Stable first, then the others (newest first by creation time); with `skip_failed`,
    not the rolled-back revision (status.failedRevision), which `undo` never picks by itself.
    """
    stable = (obj.get("status") or {}).get("stableRevision")
    failed = (obj.get("status") or {}).get("failedRevision") if skip_failed else None
    owned = [
        d
        for d in deployments
        if any(o.get("uid") == obj["metadata"].get("uid") for o in d["metadata"].get("ownerReferences") or [])
    ]
    owned.sort(key=lambda d: d["metadata"].get("creationTimestamp") or "", reverse=True)
    owned.sort(key=lambda d: d["metadata"].get("labels", {}).get(LABEL_REVISION) != stable)
    models = []
    for dep in owned:
        if failed is not None and dep["metadata"].get("labels", {}).get(LABEL_REVISION) == failed:
            continue
        containers = dep["spec"]["template"]["spec"].get("containers") or []
        env = {e["name"]: e.get("value") for c in containers if c.get("name") == "server" for e in c.get("env") or []}
        model = {key: env.get(var) for var, key in SERVER_ENV_KEYS.items()}
        if model["uri"] and model["version"]:
            models.append(model)
    return models


def undo_target(
    obj: dict[str, Any], to_version: str | None, running: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The spec.model to write back for `undo`, from what the cluster recorded.

    Sources, in this order: status.history entries that carry a `model` (newest first; when the
    operator records it), the models of revisions still running (`revision_models`: after a
    rollback, the stable one), then the `modeldeploy.io/previous-model` annotation (JSON of a
    spec.model, written by every `undo`). Without --to-version: the first of them that differs
    from the current model. Raises CliError (exit 3) when nothing suitable was recorded.
    """
    current = _full_model(obj.get("spec", {}).get("model", {}))
    candidates: list[dict[str, Any]] = []
    for entry in reversed((obj.get("status") or {}).get("history") or []):
        if isinstance(entry.get("model"), dict):
            candidates.append(_full_model(entry["model"]))
    candidates += [_full_model(m) for m in running or []]
    annotation = obj.get("metadata", {}).get("annotations", {}).get(ANNOTATION_PREVIOUS_MODEL)
    if annotation:
        try:
            candidates.append(_full_model(json.loads(annotation)))
        except (ValueError, AttributeError):
            raise CliError(f"annotation {ANNOTATION_PREVIOUS_MODEL} is not a JSON object: {annotation!r}", 3) from None
    if to_version is not None:
        matches = [c for c in candidates if c["version"] == to_version]
        if not matches:
            known = sorted({str(c["version"]) for c in candidates}) or ["none"]
            raise CliError(f"no recorded model has version {to_version!r} (recorded: {', '.join(known)})", 3)
        target = matches[0]
    else:
        others = [c for c in candidates if not _same_model(c, current)]
        if not others:
            raise CliError(
                "no previous model is recorded (no running revision serves another model, status.history "
                f"carries no models and annotation {ANNOTATION_PREVIOUS_MODEL} is absent); "
                "edit spec.model or use --to-version",
                3,
            )
        target = others[0]
    try:
        ModelRef.model_validate({k: v for k, v in target.items() if v is not None})
    except ValidationError as err:
        raise CliError(f"the recorded model is not valid: {describe_errors(err, 'spec.model')}", 3) from None
    return target


def _same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same artifact and label; format and method compare by their effective values."""
    keys = ("uri", "sha256", "version")
    if any(a[k] != b[k] for k in keys):
        return False
    return (a["method"] or "predict") == (b["method"] or "predict") and (
        a["format"] is None or b["format"] is None or a["format"] == b["format"]
    )


def undo_patch(obj: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """Merge patch: spec.model <- target, and remember the current model for the next undo."""
    current = {k: v for k, v in _full_model(obj.get("spec", {}).get("model", {})).items() if v is not None}
    return {
        "metadata": {"annotations": {ANNOTATION_PREVIOUS_MODEL: json.dumps(current, sort_keys=True)}},
        "spec": {"model": target},
    }


def _usd(x: float | None) -> str:
    if x is None:
        return "-"
    return f"${x:,.2f}" if x >= 0.995 or x == 0 else f"${x:.4g}"


def _per_day(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def render_cost(obj: dict[str, Any]) -> str:
    """The `modeldeploy cost` view: status.cost as a table, the break-even, and the replicas the
    observed peak needs (computed by the operator from the measured time per row)."""
    meta = obj.get("metadata", {})
    status = parse_status(obj)
    c = status.cost
    head = f"{meta.get('name', '?')} in {meta.get('namespace', '?')}"
    if c is None:
        return f"{head}: no cost yet (the operator fills status.cost about once a minute once a stable revision serves)"
    window = f" over the last {c.requests_window}" if c.requests_window else ""
    lines = [
        f"Cost of {head}, stable {_rev(status.stable_version, status.stable_revision)}"
        + (f", computed {c.time}" if c.time else ""),
        f"Volume:     {_per_day(c.requests_per_day)} requests/day (measured{window})",
    ]
    requests = (obj.get("spec", {}).get("serving", {}).get("resources") or {}).get("requests") or {}
    pods = f"{c.replicas} pods" if c.replicas is not None else "pods"
    if requests:
        pods += " requesting " + ", ".join(f"{k} {v}" for k, v in sorted(requests.items())) + " each"
    monthly_requests = (c.requests_per_day or 0) * 730 / 24
    managed_1k = (c.managed_monthly_usd or 0) / (monthly_requests / 1000) if monthly_requests > 0 else None
    rows = [["self-hosted", _usd(c.monthly_usd), _usd(c.per1k_predictions_usd), pods]]
    rows.append(["managed", _usd(c.managed_monthly_usd), _usd(managed_1k), "per-call endpoint"])
    if c.canary_per1k_predictions_usd is not None:
        rows.append(["canary", "-", _usd(c.canary_per1k_predictions_usd), _canary_note(status, c)])
    lines += table(["SHAPE", "MONTHLY", "PER 1K PREDICTIONS", "WHAT"], rows)
    lines.append(f"Break-even: {_per_day(c.crossover_requests_per_day)} requests/day")
    if c.used_cpu_cores is not None and c.used_memory_gib is not None:
        lines.append(
            f"Used:       {c.used_cpu_cores:.3g} CPU cores, {c.used_memory_gib * 1024:,.0f} MiB in all (kubelet, mean"
            f"{window}) = {_usd(c.used_monthly_usd)}/month if billed by use"
        )
    else:
        lines.append("Used:       not measured (no cAdvisor series in Prometheus)")
    if c.cheaper is not None or c.reason:
        lines.append(f"Cheaper:    {c.cheaper or '-'}" + (f": {c.reason}" if c.reason else ""))
    if c.replicas_for_peak is not None:
        per_row = f"{1000 * c.seconds_per_row:.3g} ms/row" if c.seconds_per_row is not None else "?"
        running = f" (running {c.replicas})" if c.replicas is not None else ""
        lines.append(
            f"Peak:       {c.peak_rows_per_second or 0:.4g} rows/s x {per_row} -> {c.replicas_for_peak} "
            f"replica{'s' if c.replicas_for_peak != 1 else ''} at 70% busy workers{running}"
        )
    else:
        lines.append("Peak:       not measured yet (no predictions in the window)")
    lines.append("A month is 730 h; a prediction is one request; prices: operator settings or spec.cost.")
    return "\n".join(lines)


def _canary_note(status: ModelDeploymentStatus, c: CostStatus) -> str:
    who = _rev(status.canary_version, status.canary_revision)
    if c.per1k_predictions_usd and c.canary_per1k_predictions_usd is not None:
        return f"{who}, {c.canary_per1k_predictions_usd / c.per1k_predictions_usd:.2f}x stable per prediction"
    return who
