"""The process kubelet's pod runtime with real (tiny) processes, no cluster: exit codes, restart
policies, CrashLoopBackOff messages, the downward API and $(VAR) expansion, unrunnable pods."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from devcluster import podrun


def make_pod(policy: str = "Always", command: list[str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "n", "uid": "u1", "labels": {"modeldeploy.io/revision": "abc"},
                     "annotations": {"a": "b"}},
        "spec": {"restartPolicy": policy, "nodeName": "local-kubelet", "serviceAccountName": "default",
                 "containers": [{"name": "server", "image": "img", "command": command or ["modeldeploy-server"]}]},
    }  # fmt: skip


def run(tmp_path: Path, policy: str, script: str) -> podrun.PodProcess:
    pp = podrun.PodProcess(make_pod(policy), "127.0.9.9", 8080, ["sh", "-c", script], {"PATH": "/usr/bin:/bin"},
                           tmp_path / "p.log", tmp_path / "cwd")  # fmt: skip
    pp.start()
    assert pp.proc is not None
    pp.proc.wait(10)
    assert pp.reap()
    return pp


def test_crash_with_always_goes_into_backoff_with_exit_code_and_last_line(tmp_path: Path) -> None:
    pp = run(tmp_path, "Always", "echo loading; echo 'refused: digest mismatch' >&2; exit 3")
    status = pp.status()
    cs = status["containerStatuses"][0]
    assert status["phase"] == "Running" and status["podIP"] == "127.0.9.9"
    assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert "exit code 3: refused: digest mismatch" in cs["state"]["waiting"]["message"]
    assert cs["lastState"]["terminated"] == {**cs["lastState"]["terminated"], "exitCode": 3, "reason": "Error",
                                             "message": "refused: digest mismatch"}  # fmt: skip
    assert not cs["ready"] and [c["status"] for c in status["conditions"] if c["type"] == "Ready"] == ["False"]
    assert not pp.maybe_restart()  # back-off first
    pp.next_start = time.monotonic()
    assert pp.maybe_restart() and pp.restart_count == 1 and pp.proc is not None
    pp.proc.kill()


@pytest.mark.parametrize(("policy", "code", "phase"), [("Never", 3, "Failed"), ("OnFailure", 0, "Succeeded"),
                                                       ("Never", 0, "Succeeded")])  # fmt: skip
def test_restart_policy_finishes_the_pod(tmp_path: Path, policy: str, code: int, phase: str) -> None:
    pp = run(tmp_path, policy, f"exit {code}")
    status = pp.status()
    assert status["phase"] == phase
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == code
    assert not pp.maybe_restart()


def test_killed_by_signal_reports_128_plus_signal(tmp_path: Path) -> None:
    pp = run(tmp_path, "Never", "kill -9 $$")
    assert pp.status()["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137


def test_downward_api_and_expansion() -> None:
    pod = make_pod()
    assert podrun.field_ref(pod, "127.0.1.2", "metadata.name") == "p"
    assert podrun.field_ref(pod, "127.0.1.2", "status.podIP") == "127.0.1.2"
    assert podrun.field_ref(pod, "127.0.1.2", "metadata.labels['modeldeploy.io/revision']") == "abc"
    assert podrun.field_ref(pod, "127.0.1.2", "metadata.annotations['a']") == "b"
    with pytest.raises(ValueError, match="not supported"):
        podrun.field_ref(pod, "127.0.1.2", "spec.hostname")
    assert podrun.expand("$(A)-$(B)-$(missing)", {"A": "1", "B": "2"}) == "1-2-$(missing)"


def test_only_the_server_command_is_runnable() -> None:
    assert podrun.runnable(make_pod()) is None
    assert podrun.runnable(make_pod(command=["/usr/local/bin/modeldeploy-server", "serve"])) is None
    reason = podrun.runnable(make_pod(command=["nginx"]))
    assert reason is not None and "modeldeploy-server" in reason and "nginx" in reason


def test_loopback_addresses_are_fresh_and_never_in_127_0_0() -> None:
    pool = podrun.IpPool()
    ips = [pool.allocate(8080) for _ in range(300)]
    assert len(set(ips)) == 300
    assert all(ip.startswith("127.0.") and not ip.startswith("127.0.0.") for ip in ips)
    assert not any(ip.endswith((".0", ".255")) for ip in ips)
