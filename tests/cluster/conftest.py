"""Fixtures of the cluster tests: a trained model in the cluster's model store, and a fresh
namespace per test (Pod Security `restricted` enforced).

The namespace is deleted after the test, which stops its pods (the session's cluster is shared by
every cluster test).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from devcluster import Cluster
from modeldeploy_demo.kube import RESTRICTED
from tests.cluster.servers import store_model


@pytest.fixture(scope="session")
def model(cluster: Cluster) -> dict[str, str]:
    return store_model(cluster)


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED}}
    cluster.apply(json.dumps(namespace))
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
