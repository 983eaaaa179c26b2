"""The rendered children keep the contracts of the team brief exactly; the revision hash is stable."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from modeldeploy_operator.api import parse_spec
from modeldeploy_operator.children import Owner, deployment, services
from modeldeploy_operator.revision import revision_of, revision_payload
from tests.operator.sim import DIGEST, spec_dict

IMAGE = "modeldeploy/modeldeploy:0.1.0"
OWNER = Owner("iris", "ml", "uid-1")


def render(raw: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = parse_spec(raw or spec_dict())
    return deployment(OWNER, spec, revision_of(spec, IMAGE), 3, IMAGE)


def test_pod_template_renders_the_env_contract_exactly() -> None:
    raw = spec_dict()
    raw["inputs"] = [{"name": "RHOB", "min": 1.5, "max": 3.1, "nullValues": [-999, -999.25]}, {"name": "GR"}]
    raw["serving"] = {"workers": 2}
    dep = render(raw)
    rev = dep["metadata"]["labels"]["modeldeploy.io/revision"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "server" and container["command"] == ["modeldeploy-server"]
    assert container["image"] == IMAGE
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env == {
        "MODELDEPLOY_MODEL_NAME": "iris",
        "MODELDEPLOY_MODEL_URI": "http://127.0.0.1:9/iris/1/model.joblib",
        "MODELDEPLOY_MODEL_SHA256": DIGEST,
        "MODELDEPLOY_MODEL_FORMAT": "joblib",
        "MODELDEPLOY_MODEL_VERSION": "1",
        "MODELDEPLOY_MODEL_METHOD": "predict",
        "MODELDEPLOY_MODEL_REVISION": rev,
        "MODELDEPLOY_INPUTS": json.dumps(
            [
                {"name": "RHOB", "min": 1.5, "max": 3.1, "nullValues": [-999.0, -999.25], "required": True},
                {"name": "GR", "nullValues": [], "required": True},
            ],
            separators=(",", ":"),
        ),
        "MODELDEPLOY_HOST": "0.0.0.0",
        "MODELDEPLOY_PORT": "8080",
        "MODELDEPLOY_WORKERS": "2",
        "MODELDEPLOY_POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
        "MODELDEPLOY_SHADOW_TOKEN": {"secretKeyRef": {"name": "iris-shadow", "key": "token", "optional": True}},
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    meta = dep["spec"]["template"]["metadata"]
    assert meta["labels"] == {
        "app.kubernetes.io/name": "modeldeploy-server",
        "app.kubernetes.io/instance": "iris",
        "app.kubernetes.io/managed-by": "modeldeploy",
        "modeldeploy.io/name": "iris",
        "modeldeploy.io/revision": rev,
    }
    assert meta["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    assert dep["spec"]["selector"]["matchLabels"] == {"modeldeploy.io/name": "iris", "modeldeploy.io/revision": rev}
    assert dep["metadata"]["name"] == f"iris-{rev}" and dep["spec"]["replicas"] == 3
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert dep["metadata"]["ownerReferences"][0]["controller"] is True


def test_the_server_accepts_the_rendered_inputs() -> None:
    from modeldeploy_server.settings import InputSpec

    raw = spec_dict()
    raw["inputs"] = [{"name": "RHOB", "min": 1.5, "max": 3.1, "nullValues": [-999]}]
    env = {e["name"]: e.get("value") for e in render(raw)["spec"]["template"]["spec"]["containers"][0]["env"]}
    parsed = [InputSpec.model_validate(i) for i in json.loads(env["MODELDEPLOY_INPUTS"])]
    assert parsed[0].name == "RHOB" and parsed[0].null_values == (-999.0,)


def test_no_digest_no_sha256_variable() -> None:
    raw = spec_dict()
    raw["model"] = {"uri": "file:///m/iris.onnx", "version": "1"}
    names = [e["name"] for e in render(raw)["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert "MODELDEPLOY_MODEL_SHA256" not in names


def test_services_select_revisions() -> None:
    stable, canary, every = services(OWNER, "aaa", "bbb")
    assert stable["metadata"]["name"] == "iris-stable"
    assert stable["spec"]["selector"] == {"modeldeploy.io/name": "iris", "modeldeploy.io/revision": "aaa"}
    assert canary["metadata"]["name"] == "iris-canary"
    assert canary["spec"]["selector"] == {"modeldeploy.io/name": "iris", "modeldeploy.io/revision": "bbb"}
    assert every["metadata"]["name"] == "iris" and every["spec"]["selector"] == {"modeldeploy.io/name": "iris"}
    for svc in (stable, canary, every):
        assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert services(OWNER, "aaa", None)[1]["spec"]["selector"]["modeldeploy.io/revision"] == "aaa"


def test_revision_hash_is_stable_and_pinned() -> None:
    spec = parse_spec(spec_dict())
    # pinned: a change here re-rolls every model in every cluster on upgrade; do it on purpose only
    assert revision_of(spec, IMAGE) == "8d30eb9be5"
    reordered = json.loads(json.dumps(spec_dict(), sort_keys=True))
    assert revision_of(parse_spec(reordered), IMAGE) == "8d30eb9be5"
    explicit_defaults = spec_dict()
    explicit_defaults["model"]["method"] = "predict"
    explicit_defaults["model"]["format"] = "joblib"
    explicit_defaults["serving"] = {"workers": 1}
    assert revision_of(parse_spec(explicit_defaults), IMAGE) == "8d30eb9be5"


def test_revision_changes_with_what_changes_pods_and_only_that() -> None:
    base = revision_of(parse_spec(spec_dict()), IMAGE)

    def changed(path: list[Any], value: Any) -> str:
        raw = copy.deepcopy(spec_dict())
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return revision_of(parse_spec(raw), IMAGE)

    for path, value in [
        (["model", "uri"], "http://127.0.0.1:9/iris/other.joblib"),
        (["model", "sha256"], "cd" * 32),
        (["model", "version"], "2"),
        (["model", "method"], "predict_proba"),
        (["inputs"], [{"name": "a", "min": 0, "max": 11}]),
        (["serving"], {"workers": 3}),
        (["serving"], {"image": "other/image:1"}),
    ]:
        assert changed(path, value) != base, path
    for path, value in [
        (["replicas"], 7),
        (["paused"], True),
        (["rollout", "steps"], [{"setWeight": 100}]),
        (["rollout", "analysis"], {"intervalSeconds": 9}),
    ]:
        assert changed(path, value) == base, path
    assert revision_of(parse_spec(spec_dict()), "other/image:2") != base


# ------------------------------------------------------------------ issue 11, M12
def test_server_pods_get_no_service_account_token_unless_asked() -> None:
    from modeldeploy_operator.api import parse_spec
    from modeldeploy_operator.children import pod_template
    from tests.operator.sim import spec_dict

    pod = pod_template("iris", parse_spec(spec_dict()), "abc", "img")
    assert pod["spec"]["automountServiceAccountToken"] is False and "serviceAccountName" not in pod["spec"]
    assert "envFrom" not in pod["spec"]["containers"][0]


def test_server_pods_meet_the_restricted_pod_security_level() -> None:
    """The fields Pod Security Admission `restricted` checks (and a read-only root filesystem,
    with the only writable place an emptyDir at /tmp, where the image keeps its artifact cache)."""
    from modeldeploy_operator.api import parse_spec
    from modeldeploy_operator.children import pod_template
    from tests.operator.sim import spec_dict

    pod = pod_template("iris", parse_spec(spec_dict()), "abc", "img")["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    # each pod gets its own copy: mutating one rendering must not change the next
    c["securityContext"]["capabilities"]["drop"].append("x")
    again = pod_template("iris", parse_spec(spec_dict()), "abc", "img")["spec"]["containers"][0]
    assert again["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_a_service_account_and_artifact_credentials_can_be_given() -> None:
    from modeldeploy_operator.api import parse_spec
    from modeldeploy_operator.children import pod_template
    from modeldeploy_operator.revision import revision_of
    from tests.operator.sim import spec_dict

    plain = parse_spec(spec_dict())
    raw = spec_dict()
    raw["serving"] = {"serviceAccountName": "iris-reader", "automountServiceAccountToken": True,
                      "artifactCredentials": {"secretName": "iris-s3"}}  # fmt: skip
    spec = parse_spec(raw)
    pod = pod_template("iris", spec, "abc", "img")
    assert pod["spec"]["serviceAccountName"] == "iris-reader" and pod["spec"]["automountServiceAccountToken"] is True
    assert pod["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "iris-s3"}}]
    assert revision_of(spec, "img") != revision_of(plain, "img")  # it changes the pods: a canary
    # a spec without them keeps the revision it had before these fields existed (no canary on upgrade)
    assert revision_of(plain, "img") == revision_of(parse_spec(spec_dict()), "img")
    assert "serviceAccountName" not in json.dumps(revision_payload(plain, "img"))


def test_bad_service_account_names_are_refused() -> None:
    from modeldeploy_operator.api import SpecError, parse_spec
    from tests.operator.sim import spec_dict

    raw = spec_dict()
    raw["serving"] = {"serviceAccountName": "Not_A_Name"}
    with pytest.raises(SpecError, match="spec.serving.serviceAccountName: String should match pattern"):
        parse_spec(raw)


def test_the_reference_profile_reaches_the_server_as_its_settings_read_it() -> None:
    from modeldeploy_server.settings import Settings

    raw = spec_dict()
    raw["model"]["reference"] = {"uri": "file:///m/profile.json", "sha256": "ab" * 32}
    env = {e["name"]: e.get("value") for e in render(raw)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["MODELDEPLOY_REFERENCE_URI"], env["MODELDEPLOY_REFERENCE_SHA256"]) == ("file:///m/profile.json",
                                                                                        "ab" * 32)  # fmt: skip
    settings = Settings.model_validate({k.removeprefix("MODELDEPLOY_").lower(): v for k, v in env.items()
                                        if k.startswith("MODELDEPLOY_REFERENCE")})  # fmt: skip
    assert settings.reference_uri == "file:///m/profile.json" and settings.reference_sha256 == "ab" * 32
    assert "MODELDEPLOY_REFERENCE_URI" not in [e["name"] for e in render(spec_dict())["spec"]["template"]["spec"][
        "containers"][0]["env"]]  # fmt: skip
