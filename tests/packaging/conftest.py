"""Fixtures of the packaging cluster tests: `kube`, once per session, on the `cluster` fixture.

It installs the ModelDeployment CRD (from crds/, server-side apply) and minimal Prometheus Operator
CRDs, creates the namespaces the tests share, and removes the tests' releases and namespaces at
the end (the CRDs stay: Helm never deletes CRDs either, and other tests need ours).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.packaging.image import install_image_venv
from tests.packaging.tools import ROOT, Kube

SHARED_NAMESPACES = ("modeldeploy-system", "pkg-watched", "pkg-cli")

# Just enough of the Prometheus Operator's CRDs for a server-side dry run of the examples and the
# ServiceMonitor (the real CRDs are large; the schema inside is not what these tests check).
MONITORING_CRDS = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": kind, "plural": plural, "singular": plural[:-1], "listKind": f"{kind}List"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }
    for kind, plural in (("PrometheusRule", "prometheusrules"), ("ServiceMonitor", "servicemonitors"))
]


@pytest.fixture(scope="session")
def kube(cluster: Any) -> Iterator[Kube]:
    k = Kube(Path(cluster.kubeconfig))
    k.prometheus_url = str(cluster.prometheus_url)
    k.cluster_env = dict(cluster.env)
    k.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    k.apply(MONITORING_CRDS, "--server-side")
    for crd in ("modeldeployments.modeldeploy.io", "prometheusrules.monitoring.coreos.com"):
        k.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
    for ns in SHARED_NAMESPACES:
        k.kubectl("create", "namespace", ns, check=False)
    yield k
    for release, ns in k.releases:
        k.helm("uninstall", release, "-n", ns, check=False)
    for ns in sorted(set(SHARED_NAMESPACES) | k.namespaces):
        if ns != "modeldeploy-system":
            k.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="session")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's /opt/modeldeploy, built by hack/image-install.sh into a fresh venv (no cluster)."""
    return install_image_venv(tmp_path_factory.mktemp("image") / "venv")
