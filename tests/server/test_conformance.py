"""Conformance with the official Open Inference Protocol REST OpenAPI document, by schemathesis.

`open_inference_rest.yaml` is the document as published (kserve/open-inference-protocol,
Apache-2.0, `specification/protocol/open_inference_rest.yaml` at d49cc23f). Its model paths are
written `/v2/models/${MODEL_NAME}/...`: the `$` is literal there, so every generated name would be
`$...` and a 404. The test rewrites `${X}` to `{X}` and pins MODEL_NAME and MODEL_VERSION to the
served model (other names are the 404s the server owes them; `test_boundary` covers those).
schemathesis (CLI, one worker, bounded examples) then runs every phase against the real server
with a real model, with the checks that hold for any correct server: no 5xx, responses and
content types as documented, methods not in the document answered 405 with `Allow`, and
schema-invalid requests refused. Not run: `status_code_conformance` and
`positive_data_acceptance`: the document lists only 200/400, and cannot express a model's input
contract, so a schema-valid but contract-breaking tensor is rightly a 422.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.server.conftest import Artifact

SPEC = Path(__file__).with_name("open_inference_rest.yaml")
CHECKS = ",".join(("not_a_server_error", "content_type_conformance", "response_schema_conformance",
                   "unsupported_method", "negative_data_rejection"))  # fmt: skip


def pinned_spec(model: str, version: str) -> dict[str, Any]:
    raw = yaml.safe_load(SPEC.read_text())
    paths = {}
    for path, item in raw["paths"].items():
        for parameter in item.get("parameters", []):
            value = {"MODEL_NAME": model, "MODEL_VERSION": version}.get(parameter["name"])
            if value is not None:
                parameter["schema"] = {"type": "string", "enum": [value]}
        paths[path.replace("${", "{")] = item
    raw["paths"] = paths
    return dict(raw)


def test_the_spec_quirk_is_what_the_pinned_copy_fixes() -> None:
    raw = yaml.safe_load(SPEC.read_text())
    assert "/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}/infer" in raw["paths"]
    assert "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer" in pinned_spec("m", "1")["paths"]


def test_schemathesis_over_the_official_document(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path, tmp_path: Path
) -> None:
    binary = Path(sys.executable).with_name("schemathesis")
    assert binary.exists() or shutil.which("schemathesis"), "schemathesis is a dev dependency"
    served = serve(artifacts["porosity"].settings(cache_dir))
    spec = tmp_path / "oip.yaml"
    spec.write_text(yaml.safe_dump(pinned_spec("porosity", "7")))
    result = subprocess.run(
        [str(binary), "run", str(spec), "--url", served.url, "--checks", CHECKS, "--workers", "1",
         "--max-examples", "40", "--seed", "10", "--phases", "examples,coverage,fuzzing,stateful",
         "--request-timeout", "10", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert served.client.get("/v2/health/ready").status_code == 200
    text = served.client.get("/metrics").text
    errors = [line for line in text.splitlines()
              if line.startswith("modeldeploy_requests_total{") and 'outcome="error"' in line]  # fmt: skip
    assert errors and all(line.endswith(" 0.0") for line in errors), errors
