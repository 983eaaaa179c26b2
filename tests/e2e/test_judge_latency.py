"""End to end: a canary slow on part of its inputs is rolled back on `maxLatencyP99Ratio` alone
(canary p99 over stable p99 of answered requests, both revisions over the same window since the
canary started, judged anytime-valid at bucket resolution), with the absolute p99 gate out of the way.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from modeldeploy_demo import kube as k
from tests.e2e.conftest import E2E, NAME

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAMESPACES = ("ratio",)


def test_a_slow_canary_is_rolled_back_on_its_p99_over_stables(e2e: E2E, say: Callable[[str], None]) -> None:
    ns, host = e2e.deploy_v1("ratio")
    traffic = e2e.traffic(host, rate=30, bad_share=0.15, workers=6)
    analysis = {"maxLatencyP99Seconds": 100, "maxLatencyP99Ratio": 1.5, "failureLimit": 0}
    k.apply(e2e.kubeconfig, ns, e2e.mdep("slow", "3", analysis=analysis))
    st = e2e.kube.wait_for_phase(ns, NAME, "RolledBack", 120)
    traffic.stop()
    check = next(c for c in st["lastAnalysis"]["checks"] if c["name"] == "latency-p99-ratio")
    assert check["verdict"] == "Failed" and check["lower"] > 1.5, check
    assert check["samples"] > 0 and check["samplesStable"] > 0, check
    # the ratio alone decided: the absolute gate (100 s) never failed (it may not have been judged yet)
    absolute = [c for c in st["lastAnalysis"]["checks"] if c["name"] == "latency-p99"]
    assert all(c["verdict"] != "Failed" for c in absolute), absolute
    assert "latency-p99-ratio" in st["message"], st["message"]
    say(f"slow canary rolled back on the ratio: {st['message']}")
