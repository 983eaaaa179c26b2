"""examples/ and the Argo CD health check in docs/, without a cluster.

ModelDeployments parse with the API's models, the HTTPRoute matches what the operator patches,
the PrometheusRule passes promtool, the Grafana dashboard queries only metrics that exist, and the
Argo CD Lua script runs on Lua 5.1 (Argo CD's gopher-lua level) for every phase. The cluster tests
(test_cluster.py) also apply every example with a server-side dry run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeldeploy_operator.api import ModelDeployment, parse_spec
from tests.packaging.tools import ROOT

EXAMPLES = ROOT / "examples"


def _server_metrics() -> set[str]:
    """The series names the server exposes (its metric name constants are the contract)."""
    from modeldeploy_server import metrics as sm

    return {sm.REQUESTS, f"{sm.DURATION}_bucket", sm.REJECTIONS, sm.PREDICTIONS, sm.INFO, sm.PREDICTION_CLASS,
            sm.PREDICTION_BIN, sm.INPUT_BIN, sm.INPUT_REFERENCE, sm.NONFINITE}  # fmt: skip


def _operator_metrics() -> set[str]:
    """The series names the operator exposes, from its prometheus_client collectors."""
    from prometheus_client import Counter, Gauge, Histogram

    from modeldeploy_operator import metrics as om

    names: set[str] = set()
    for value in vars(om).values():
        if isinstance(value, Counter | Gauge | Histogram):
            (family,) = value.describe()
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
            names |= {family.name + s for s in suffixes}
    return names


SERVER_METRICS = _server_metrics()
OPERATOR_METRICS = _operator_metrics()


def example_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def model_deployments() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in example_docs() if d["kind"] == "ModelDeployment"}


def test_examples_are_present() -> None:
    kinds = sorted(d["kind"] for _, d in example_docs())
    assert kinds == ["HTTPRoute", "ModelDeployment", "ModelDeployment", "PrometheusRule"]
    assert (EXAMPLES / "grafana-dashboard.json").is_file()


@pytest.mark.parametrize("name", sorted(model_deployments()))
def test_model_deployment_examples_parse(name: str) -> None:
    doc = model_deployments()[name]
    spec = parse_spec(doc["spec"])
    ModelDeployment.model_validate(doc)
    assert spec.model.effective_format is not None


def test_regression_has_an_input_contract_and_the_classifier_probabilities() -> None:
    mds = model_deployments()
    porosity, lithology = parse_spec(mds["porosity"]["spec"]), parse_spec(mds["lithology"]["spec"])
    assert porosity.model.method == "predict" and len(porosity.inputs) >= 3
    assert any(i.null_values for i in porosity.inputs) and all(i.min is not None for i in porosity.inputs)
    assert lithology.model.method == "predict_proba"


def test_httproute_splits_between_the_operators_services() -> None:
    (route,) = [d for _, d in example_docs() if d["kind"] == "HTTPRoute"]
    porosity = parse_spec(model_deployments()["porosity"]["spec"])
    assert porosity.rollout.traffic_routing is not None and porosity.rollout.traffic_routing.gateway_api is not None
    assert porosity.rollout.traffic_routing.gateway_api.http_route == route["metadata"]["name"]
    (rule,) = route["spec"]["rules"]
    refs = {(b["name"], b["port"]) for b in rule["backendRefs"]}
    assert refs == {("porosity-stable", 80), ("porosity-canary", 80)}
    assert route["metadata"]["namespace"] == model_deployments()["porosity"]["metadata"]["namespace"]


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(modeldeploy_[a-z_]+)", expr))


def test_prometheus_rule_uses_known_metrics_and_passes_promtool(tmp_path: Path) -> None:
    (rule,) = [d for _, d in example_docs() if d["kind"] == "PrometheusRule"]
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    used = set().union(*(_metric_names(e) for e in exprs))
    assert {"modeldeploy_operator_rollouts_total", "modeldeploy_requests_total"} <= used
    assert used <= SERVER_METRICS | OPERATOR_METRICS, used - SERVER_METRICS - OPERATOR_METRICS
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed: rule syntax not checked")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(rule["spec"]))
    proc = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grafana_dashboard_queries_known_metrics() -> None:
    dash = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used <= SERVER_METRICS | OPERATOR_METRICS, used - SERVER_METRICS - OPERATOR_METRICS
    assert {"modeldeploy_requests_total", "modeldeploy_request_duration_seconds_bucket"} <= used
    assert {"modeldeploy_operator_canary_weight", "modeldeploy_operator_rollouts_total"} <= used
    variables = {v["name"] for v in dash["templating"]["list"]}
    for expr in exprs:
        assert set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval"} <= variables


def _argocd_health() -> Any:
    from lupa.lua51 import LuaRuntime

    text = (ROOT / "docs" / "argocd-health.md").read_text()
    (script,) = re.findall(r"```lua\n(.*?)```", text, re.DOTALL)
    lua = LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval(f"function(obj)\n{script}\nend")

    def run(obj: dict[str, Any]) -> tuple[str, str]:
        result = check(_to_lua(lua, obj))
        return str(result["status"]), str(result["message"])

    return run


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


@pytest.mark.parametrize(
    ("status", "generation", "health"),
    [
        (None, 1, "Progressing"),
        ({"observedGeneration": 1, "phase": "Healthy"}, 2, "Progressing"),
        ({"observedGeneration": 2, "phase": "Healthy"}, 2, "Healthy"),
        ({"observedGeneration": 2, "phase": "Healthy", "canaryRevision": "abc"}, 2, "Progressing"),
        ({"observedGeneration": 2, "phase": "Deploying"}, 2, "Progressing"),
        ({"observedGeneration": 2, "phase": "Progressing", "message": "step 1/4"}, 2, "Progressing"),
        ({"observedGeneration": 2, "phase": "Promoting"}, 2, "Progressing"),
        ({"observedGeneration": 2, "phase": "Paused"}, 2, "Suspended"),
        ({"observedGeneration": 2, "phase": "RolledBack", "message": "canary error rate 4.2% > 1%"}, 2, "Degraded"),
        ({"observedGeneration": 2, "phase": "Aborted"}, 2, "Degraded"),
        ({"observedGeneration": 2, "phase": "Degraded"}, 2, "Degraded"),
        ({"observedGeneration": 2, "phase": "Invalid"}, 2, "Degraded"),
    ],
)
def test_argocd_health_check(status: dict[str, Any] | None, generation: int, health: str) -> None:
    obj: dict[str, Any] = {"metadata": {"name": "porosity", "generation": generation}}
    if status is not None:
        obj["status"] = status
    got, message = _argocd_health()(obj)
    assert got == health
    if status and status.get("message"):
        assert status["message"] in message


def promtool_rule_test(tmp_path: Path, unit_tests: dict[str, Any]) -> None:
    """`promtool test rules` of the example PrometheusRule with `unit_tests` (its "tests" list)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    (rule,) = [d for _, d in example_docs() if d["kind"] == "PrometheusRule"]
    (rules_file := tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    tests = {"rule_files": [str(rules_file)], "evaluation_interval": "1m", **unit_tests}
    (test_file := tmp_path / "test.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_input_drift_alert_names_the_drifted_feature_in_prometheus_own_engine(tmp_path: Path) -> None:
    """promtool's rule unit test evaluates the example's expression on series shaped like the
    server's: GR's inputs all moved to its top bin (distance 0.75), RHOB's match training (0)."""
    sel = 'namespace="ml",model="logs",revision="r1"'
    series = []
    for feature in ("GR", "RHOB"):
        for b in range(4):
            per_minute = 10 if feature == "RHOB" or b == 3 else 0
            series.append({"series": f'modeldeploy_input_bin_total{{{sel},feature="{feature}",bin="{b}"}}',
                           "values": f"0+{per_minute}x600"})
            series.append({"series": f'modeldeploy_input_reference_proportion{{{sel},feature="{feature}",bin="{b}"}}',
                           "values": "0.25x600"})
    alert = {
        "exp_labels": {"severity": "info", "namespace": "ml", "model": "logs", "revision": "r1", "feature": "GR"},
        "exp_annotations": {
            "summary": "ml/logs revision r1: input GR drifted from training (distance 0.75)",
            "description": "The share of GR values in each training bin differs from the reference profile by a "
            "total-variation distance above 0.2 over 6 h; compare modeldeploy_input_bin_total with "
            "modeldeploy_input_reference_proportion by bin.",
        },
    }
    promtool_rule_test(tmp_path, {
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [
            {"eval_time": "35m", "alertname": "ModelInputDrift", "exp_alerts": []},  # 350 rows < 2,000 (no `for` left)
            {"eval_time": "400m", "alertname": "ModelInputDrift", "exp_alerts": [alert]},
        ]}],
    })  # fmt: skip


def test_the_operator_input_drift_alert_fires_for_the_features_the_condition_names(tmp_path: Path) -> None:
    """promtool's rule unit test of `ModelDeploymentInputDrift` on the operator's series: GR is named by
    InputDrift=True from minute 5 (distance 0.65), RHOB never (distance 0.02)."""
    sel = 'namespace="ml",name="logs",job="modeldeploy-operator",instance="10.0.0.7:8000"'
    series = [
        {"series": f'modeldeploy_operator_input_drift{{{sel},feature="GR"}}', "values": "0.65x30"},
        {"series": f'modeldeploy_operator_input_drift{{{sel},feature="RHOB"}}', "values": "0.02x30"},
        {"series": f'modeldeploy_operator_input_drifted{{{sel},feature="GR"}}', "values": "0x4 1x25"},
        {"series": f'modeldeploy_operator_input_drifted{{{sel},feature="RHOB"}}', "values": "0x30"},
    ]
    alert = {
        "exp_labels": {"severity": "info", "namespace": "ml", "name": "logs", "feature": "GR"},
        "exp_annotations": {
            "summary": "ml/logs: the stable revision's input GR drifted from its training profile (distance 0.65)",
            "description": "`kubectl describe mdep logs -n ml` shows the InputDrift condition: each drifted feature's "
            "distance and interval, the window and n. Look at the inputs and retrain; the operator does not roll back.",
        },
    }
    promtool_rule_test(tmp_path, {
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [
            {"eval_time": "3m", "alertname": "ModelDeploymentInputDrift", "exp_alerts": []},
            {"eval_time": "10m", "alertname": "ModelDeploymentInputDrift", "exp_alerts": [alert]},
        ]}],
    })  # fmt: skip
