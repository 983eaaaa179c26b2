"""The Helm chart, rendered with helm (no cluster): lint, values schema, RBAC, operator settings."""

from __future__ import annotations

import re

import pytest

from tests.packaging.tools import CHART, ROOT, by_kind, docs, helm, run, template

CONTRACT_ENV = {
    "MODELDEPLOY_OPERATOR_PROMETHEUS_URL",
    "MODELDEPLOY_OPERATOR_SERVER_IMAGE",
    "MODELDEPLOY_OPERATOR_NAMESPACES",
    "MODELDEPLOY_OPERATOR_TICK_SECONDS",
    "MODELDEPLOY_OPERATOR_METRICS_PORT",
    "MODELDEPLOY_OPERATOR_SCALE_DOWN_DELAY_SECONDS",
    # beyond the brief's contract: settings of operator/modeldeploy_operator/settings.py
    "MODELDEPLOY_OPERATOR_SCRAPE_INTERVAL_SECONDS",
    "MODELDEPLOY_OPERATOR_PROMETHEUS_TIMEOUT_SECONDS",
    "MODELDEPLOY_OPERATOR_CPU_CORE_HOUR_USD",
    "MODELDEPLOY_OPERATOR_MEMORY_GIB_HOUR_USD",
    "MODELDEPLOY_OPERATOR_MANAGED_PER_1K_USD",
    "MODELDEPLOY_OPERATOR_SELECTOR",
    "MODELDEPLOY_OPERATOR_WORKERS",
    "MODELDEPLOY_OPERATOR_SHADOW_KEY_SECRET",
    "MODELDEPLOY_OPERATOR_COST_REFRESH_SECONDS",
}


def _env(rendered: str) -> dict[str, str]:
    (deploy,) = by_kind(rendered, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_helm_lint_strict() -> None:
    out = run([helm(), "lint", "--strict", str(CHART)]).stdout
    assert "0 chart(s) failed" in out


def test_default_render_has_the_operator_objects() -> None:
    kinds = sorted(d["kind"] for d in docs(template()))
    assert kinds == [
        "ClusterRole", "ClusterRoleBinding", "Deployment", "Role", "Role", "RoleBinding", "RoleBinding", "Service",
        "ServiceAccount",
    ]  # fmt: skip


def test_operator_deployment_shape() -> None:
    (deploy,) = by_kind(template(), "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1
    # replicas elect a leader on a Lease (issue 11 M9): a rolling update never has two acting
    assert spec["strategy"] == {"type": "RollingUpdate"}
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELDEPLOY_OPERATOR_LEADER_ELECTION_NAMESPACE"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    (lease_role,) = [r for r in by_kind(template(), "Role") if r["metadata"]["name"].endswith("-leader-election")]
    assert lease_role["metadata"]["namespace"] == "modeldeploy-system"
    assert lease_role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["modeldeploy-operator"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert {"name": "metrics", "containerPort": 8000, "protocol": "TCP"} in c["ports"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert labels["app.kubernetes.io/name"] == "modeldeploy"


def test_default_operator_settings() -> None:
    env = _env(template())
    assert set(env) == CONTRACT_ENV
    assert env["MODELDEPLOY_OPERATOR_SERVER_IMAGE"] == "modeldeploy/modeldeploy:0.1.0"
    assert env["MODELDEPLOY_OPERATOR_NAMESPACES"] == ""
    assert env["MODELDEPLOY_OPERATOR_TICK_SECONDS"] == "5"
    assert env["MODELDEPLOY_OPERATOR_SCALE_DOWN_DELAY_SECONDS"] == "30"
    assert env["MODELDEPLOY_OPERATOR_METRICS_PORT"] == "8000"
    assert env["MODELDEPLOY_OPERATOR_SCRAPE_INTERVAL_SECONDS"] == "30"
    assert env["MODELDEPLOY_OPERATOR_SELECTOR"] == "" and env["MODELDEPLOY_OPERATOR_WORKERS"] == "16"
    assert env["MODELDEPLOY_OPERATOR_SHADOW_KEY_SECRET"] == "modeldeploy-system/modeldeploy-shadow-key"
    assert env["MODELDEPLOY_OPERATOR_COST_REFRESH_SECONDS"] == "300"


def test_the_only_secret_the_operator_reads_is_its_shadow_key_by_name() -> None:
    (role,) = [r for r in by_kind(template(), "Role") if r["metadata"]["name"].endswith("-shadow-key")]
    assert role["metadata"]["namespace"] == "modeldeploy-system"
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["modeldeploy-shadow-key"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
    ]
    (binding,) = [b for b in by_kind(template(), "RoleBinding") if b["metadata"]["name"].endswith("-shadow-key")]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "modeldeploy", "namespace": "modeldeploy-system"}]


def test_every_operator_env_is_an_operator_setting() -> None:
    from modeldeploy_operator.settings import OperatorSettings

    known = {f"MODELDEPLOY_OPERATOR_{name.upper()}" for name in OperatorSettings.model_fields}
    assert set(_env(template())) <= known, set(_env(template())) - known


def test_custom_image_and_prometheus() -> None:
    rendered = template(
        "--set", "image.repository=registry.example/ml/modeldeploy",
        "--set-string", "image.tag=1.2.3",
        "--set", "serverImage=registry.example/ml/server:9",
        "--set", "prometheusUrl=http://prom.monitoring:9090",
        "--set", "tickSeconds=2",
    )  # fmt: skip
    (deploy,) = by_kind(rendered, "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/ml/modeldeploy:1.2.3"
    env = _env(rendered)
    assert env["MODELDEPLOY_OPERATOR_SERVER_IMAGE"] == "registry.example/ml/server:9"
    assert env["MODELDEPLOY_OPERATOR_PROMETHEUS_URL"] == "http://prom.monitoring:9090"
    assert env["MODELDEPLOY_OPERATOR_TICK_SECONDS"] == "2"


def test_pricing_reaches_the_operator_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from modeldeploy_operator.cost import Prices
    from modeldeploy_operator.settings import OperatorSettings

    defaults = _env(template())
    for key, value in defaults.items():
        monkeypatch.setenv(key, value)
    assert OperatorSettings().prices() == Prices(0.04, 0.005, 0.40)
    env = _env(template("--set", "pricing.cpuCoreHourUsd=0.0445", "--set", "pricing.memoryGiBHourUsd=0.0049225",
                        "--set", "pricing.managedPer1kUsd=1.5"))  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert OperatorSettings().prices() == Prices(0.0445, 0.0049225, 1.5)


def _rules(rendered: str, kind: str) -> list[dict[str, list[str]]]:
    return [rule for role in by_kind(rendered, kind) for rule in role["rules"]]


def _allowed(rules: list[dict[str, list[str]]], group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in rules)


def test_rbac_least_privilege_cluster_mode() -> None:
    rules = _rules(template(), "ClusterRole")
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[key], f"wildcard in {rule}"
        assert "nodes" not in rule["resources"]
        if "secrets" in rule["resources"]:  # write-only (the shadow token's Secret): never read
            assert rule["resources"] == ["secrets"] and set(rule["verbs"]) == {"create", "patch"}, rule
    needed = [
        ("modeldeploy.io", "modeldeployments", "watch"),
        ("modeldeploy.io", "modeldeployments", "patch"),
        ("modeldeploy.io", "modeldeployments/status", "patch"),
        ("apps", "deployments", "create"),
        ("apps", "deployments", "delete"),
        ("apps", "deployments/scale", "patch"),
        ("", "services", "create"),
        ("", "pods", "list"),
        ("gateway.networking.k8s.io", "httproutes", "patch"),
        ("", "events", "create"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    ]
    for need in needed:
        assert _allowed(rules, *need), f"operator lacks {need}"
    assert not _allowed(rules, "", "pods", "delete")
    assert not _allowed(rules, "events.k8s.io", "events", "create")  # kopf posts core/v1 Events only
    assert not _allowed(rules, "", "namespaces", "list")  # cluster-wide kopf never lists namespaces
    assert not _allowed(rules, "gateway.networking.k8s.io", "httproutes", "create")


OWN_ROLES = ("-leader-election", "-shadow-key")  # the release namespace's own Roles (and their bindings)

# The verbs the operator and kopf issue in a watched namespace (operator/modeldeploy_operator/kube.py,
# cache.py and kopf's clients): children by server-side apply or merge patch (PATCH, and create when
# new), reads from list-and-watch caches or lists, a fresh GET of a ModelDeployment or an HTTPRoute,
# no PUT anywhere but the finalizers subresource (the OwnerReferencesPermissionEnforcement plugin).
ISSUED = {
    ("modeldeploy.io", "modeldeployments"): {"get", "list", "watch", "patch"},
    ("modeldeploy.io", "modeldeployments/status"): {"patch"},
    ("modeldeploy.io", "modeldeployments/finalizers"): {"update"},
    ("apps", "deployments"): {"list", "watch", "create", "patch", "delete"},
    ("apps", "deployments/scale"): {"patch"},
    ("", "services"): {"list", "watch", "create", "patch"},
    ("batch", "cronjobs"): {"list", "create", "patch", "delete"},
    ("batch", "jobs"): {"list"},
    ("", "secrets"): {"create", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"create", "patch", "delete"},
    ("policy", "poddisruptionbudgets"): {"create", "patch", "delete"},
    ("", "pods"): {"list", "watch"},
    ("gateway.networking.k8s.io", "httproutes"): {"get", "list", "watch", "patch"},
    ("", "events"): {"create"},
}


@pytest.mark.parametrize("flags", [[], ["--set", "rbac.namespaced=true"]], ids=["cluster", "namespaced"])
def test_the_namespaced_rules_grant_only_the_verbs_the_operator_issues(flags: list[str]) -> None:
    """Least privilege, not only enough: each resource gets exactly the verbs the code issues (the
    e2e suite runs the operator as the chart's pod under these rules, which proves they suffice)."""
    rendered = template(*flags)
    kind = "Role" if flags else "ClusterRole"
    roles = [r for r in by_kind(rendered, kind) if not r["metadata"]["name"].endswith(OWN_ROLES)]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in (rule for role in roles for rule in role["rules"]):
        if "resourceNames" in rule or rule["apiGroups"] == ["apiextensions.k8s.io"]:
            continue  # granted by name (the shadow key), or kopf's cluster-wide CRD watch
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    granted.pop(("", "namespaces"), None)  # cluster mode: kopf's namespace watch (checked elsewhere)
    assert granted == ISSUED


def test_every_rbac_rule_has_a_comment_saying_why() -> None:
    for name in ("_rbac.tpl", "clusterrole.yaml", "shadow-key.yaml"):
        lines = (CHART / "templates" / name).read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("- apiGroups:"):
                assert lines[i - 1].strip().startswith("#"), f"{name}:{i + 1}: RBAC rule without a comment"


@pytest.mark.parametrize(
    ("flags", "namespaces"),
    [
        (["--set", "rbac.namespaced=true"], ["modeldeploy-system"]),
        (["--set", "rbac.namespaced=true", "--set", "watchNamespaces={team-a,team-b}"], ["team-a", "team-b"]),
    ],
)
def test_namespaced_mode_uses_roles_only(flags: list[str], namespaces: list[str]) -> None:
    rendered = template(*flags)
    kinds = {d["kind"] for d in docs(rendered)}
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    roles = [r for r in by_kind(rendered, "Role") if not r["metadata"]["name"].endswith(OWN_ROLES)]
    bindings = [b for b in by_kind(rendered, "RoleBinding") if not b["metadata"]["name"].endswith(OWN_ROLES)]
    assert sorted(r["metadata"]["namespace"] for r in roles) == namespaces
    assert sorted(b["metadata"]["namespace"] for b in bindings) == namespaces
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "modeldeploy", "namespace": "modeldeploy-system"}]
    rules = [rule for role in roles for rule in role["rules"]]
    assert not any("customresourcedefinitions" in r["resources"] or "namespaces" in r["resources"] for r in rules)
    assert _env(rendered)["MODELDEPLOY_OPERATOR_NAMESPACES"] == ",".join(namespaces)


def test_service_monitor_is_optional() -> None:
    assert not by_kind(template(), "ServiceMonitor")
    (sm,) = by_kind(template("--set", "serviceMonitor.enabled=true", "--set", "serviceMonitor.labels.release=prom"),
                    "ServiceMonitor")  # fmt: skip
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["metadata"]["labels"]["release"] == "prom"
    (svc,) = by_kind(template(), "Service")
    assert svc["spec"]["selector"] == sm["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "imagee.tag=1"], "additional properties 'imagee' not allowed"),
        (["--set", "image.pullpolicy=Always"], "additional properties 'pullpolicy' not allowed"),
        (["--set", "serviceMonitor.enable=true"], "additional properties 'enable' not allowed"),
        (["--set", "tickSeconds=0"], "/tickSeconds"),
        (["--set", "prometheusUrl=prometheus:9090"], "/prometheusUrl"),
        (["--set", "watchNamespaces={Team_A}"], "/watchNamespaces/0"),
        (["--set", "pricing.cpuCoreHourUsd=-1"], "at '/pricing/cpuCoreHourUsd': minimum: got -1, want 0"),
        (["--set", "pricing.managedPer1kUsd=cheap"], "'cheap' does not match pattern"),
        (["--set", "pricing.memoryGibHourUsd=1"], "additional properties 'memoryGibHourUsd' not allowed"),
    ],
)
def test_misspelt_or_bad_values_fail_with_a_clear_message(flags: list[str], message: str) -> None:
    proc = run([helm(), "template", "x", str(CHART), *flags], check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_values_schema_closes_every_object() -> None:
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(schema, "")


def test_values_schema_and_values_yaml_name_the_same_keys() -> None:
    """Every key the schema accepts is in values.yaml (so it has a default and a documented row in
    the README table), and every key of values.yaml is in the schema: at the top level and inside
    the chart's own mappings (those whose keys have rows of their own: image, pricing, rbac, ...);
    Kubernetes objects passed through (affinity, resources, securityContext) keep the API's keys."""
    import json

    import yaml

    from chart_docs import comments

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = comments(CHART / "values.yaml")

    def compare(node: dict[str, object], given: dict[str, object], path: str) -> None:
        props = node.get("properties")
        assert isinstance(props, dict), f"{path or 'values'}: the schema lists no properties"
        accepted = set(props) - {"global"}  # Helm passes `global` to every chart
        assert accepted == set(given), (
            f"{path or 'values'}: only in the schema {sorted(accepted - set(given))}, "
            f"only in values.yaml {sorted(set(given) - accepted)}"
        )
        for key in sorted(accepted):
            child, where = props[key], f"{path}.{key}" if path else key
            if isinstance(given[key], dict) and any(f"{where}.{k}" in documented for k in given[key]):
                assert isinstance(child, dict), where
                compare(child, given[key], where)

    compare(schema, values, "")


def test_every_value_is_commented() -> None:
    """Each top-level value, and each key of a section (image, rbac, ...), has a comment above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    in_section = False
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if not m or len(m.group(1)) > 2:
            continue
        commented = i > 0 and lines[i - 1].strip().startswith("#")
        if not m.group(1):  # top level: a commented value, or an uncommented section of commented keys
            in_section = not commented and not m.group(3).strip()
            assert commented or in_section, f"values.yaml:{i + 1}: {m.group(2)} has no comment"
        elif in_section:
            assert commented, f"values.yaml:{i + 1}: {m.group(2)} has no comment"


def test_chart_readme_lists_every_value() -> None:
    import yaml

    from chart_docs import comments, rows

    values = CHART / "values.yaml"
    readme = (CHART / "README.md").read_text()
    keys = [path for path, _, _ in rows(yaml.safe_load(values.read_text()), comments(values))]
    assert len(keys) > 30
    assert [k for k in keys if f"`{k}`" not in readme] == []


def test_chart_crd_is_a_byte_identical_copy() -> None:
    top = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    copy = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert top == copy, "charts/modeldeploy/crds/ and crds/ hold different files: run `make crds`"
    for name in top:
        assert (ROOT / "crds" / name).read_bytes() == (CHART / "crds" / name).read_bytes(), (
            f"charts/modeldeploy/crds/{name} drifted from crds/{name}: run `make crds`"
        )


def test_plain_manifests_are_rendered_from_the_chart() -> None:
    fresh = run(["bash", str(ROOT / "hack" / "render-manifests.sh")]).stdout
    committed = (ROOT / "deploy" / "modeldeploy.yaml").read_text()
    assert committed == fresh, "deploy/modeldeploy.yaml drifted from the chart: run `make manifests`"
    kinds = [d["kind"] for d in docs(committed)]
    assert kinds[:2] == ["Namespace", "CustomResourceDefinition"]
    assert {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment"} <= set(kinds)
    for d in docs(committed):
        if d["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == "modeldeploy-system"
