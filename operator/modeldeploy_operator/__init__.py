"""modeldeploy operator: reconciles ModelDeployment resources into canary rollouts of model servers.

`api` holds the resource's pydantic models (the one source of truth for the CRD), `crd` turns them
into the CustomResourceDefinition committed under `crds/`.
"""

GROUP = "modeldeploy.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["mdep"]
FINALIZER = f"{GROUP}/finalizer"  # kopf's, on the objects an unsharded operator acts on (settings.finalizer)
