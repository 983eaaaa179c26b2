"""The revision of a ModelDeployment: a short, stable hash of everything that changes the server pods.

Called by `core.decide` every tick (the desired revision) and by `children` (labels, Deployment
names, the MODELDEPLOY_MODEL_REVISION env var that becomes a metric label).

What is in it: the model's uri, sha256, effective format, method and **version**, the input
contract, and the serving fields (the resolved image, workers, resources, and when set the
ServiceAccount, its token mount and the artifact credentials' Secret). The version is in it
because it is rendered into the pods (MODELDEPLOY_MODEL_VERSION, a metric label): a version-only
change must go through a canary like any other pod change, never an in-place rolling update.
The resolved image is in it for the same reason (an operator whose default image changes rolls
each model out by canary). `replicas`, `rollout` and `paused` are not: they change no pod.

The hash is of canonical JSON (sorted keys, no whitespace, wire names), so it does not depend on
dict order, Python version or pydantic defaults being written out or not.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from modeldeploy_operator.api import ModelDeploymentSpec

REVISION_LENGTH = 10


def resolve_image(spec: ModelDeploymentSpec, default_image: str) -> str:
    """The server image of a spec: spec.serving.image, else the operator's default (the one rule)."""
    return spec.serving.image or default_image


def revision_payload(spec: ModelDeploymentSpec, default_image: str) -> dict[str, Any]:
    """The canonical document that is hashed, with the image `resolve_image` gives."""
    image = resolve_image(spec, default_image)
    model = spec.model
    resources = spec.serving.resources
    return {
        "model": {
            "uri": model.uri,
            "sha256": model.sha256,
            "format": model.effective_format,
            "method": model.method,
            "version": model.version,
        },
        "inputs": [i.model_dump(by_alias=True, mode="json") for i in spec.inputs],
        "serving": {
            "image": image,
            "workers": spec.serving.workers,
            "resources": resources.model_dump(by_alias=True, mode="json") if resources else None,
            # fields added later enter the payload only when set: an operator upgrade must not
            # change the revision of a spec that does not use them (a canary for every object)
            **({"serviceAccountName": spec.serving.service_account_name} if spec.serving.service_account_name else {}),
            **({"automountServiceAccountToken": True} if spec.serving.automount_service_account_token else {}),
            **(
                {"artifactSecret": spec.serving.artifact_credentials.secret_name}
                if spec.serving.artifact_credentials
                else {}
            ),
        },
    }


def revision_of(spec: ModelDeploymentSpec, default_image: str) -> str:
    """10 lowercase hex digits: short enough for labels and names, 40 bits against collisions."""
    canonical = json.dumps(revision_payload(spec, default_image), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:REVISION_LENGTH]
