"""Fixtures of the cluster tests: a trained model artifact, and a fresh namespace per test.

The namespace is deleted after the test, which stops its server processes (the session's cluster
is shared by every cluster test).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from devcluster import Cluster
from tests.cluster.kube import train_model


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return train_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
