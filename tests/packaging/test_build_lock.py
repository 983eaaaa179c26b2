"""The build scripts take one lock per cache folder: two clones building at once wait for each
other instead of writing the same generated files together (hack/build-lock.sh)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HOLD = 1.5


def build(cache: Path, log: Path, name: str = "") -> subprocess.Popen[str]:
    """A stand-in build step: take the lock the way the scripts do, then record its start and end."""
    script = (
        f'cache_root={cache}; here={REPO}/hack; source "$here/build-lock.sh"; build_lock {name}; '
        f'echo "start $(date +%s.%N)" >> {log}; sleep {HOLD}; echo "end $(date +%s.%N)" >> {log}'
    )
    return subprocess.Popen(["bash", "-c", script], stderr=subprocess.PIPE, text=True)


def spans(log: Path) -> list[tuple[float, float]]:
    lines = [line.split() for line in log.read_text().splitlines()]
    starts = sorted(float(t) for kind, t in lines if kind == "start")
    ends = sorted(float(t) for kind, t in lines if kind == "end")
    return list(zip(starts, ends, strict=True))


def test_two_builds_on_one_cache_run_one_after_the_other(tmp_path: Path) -> None:
    log = tmp_path / "log"
    first = build(tmp_path, log)
    time.sleep(0.3)
    second = build(tmp_path, log)
    _, err_first = first.communicate(timeout=30)
    _, err_second = second.communicate(timeout=30)
    assert first.returncode == 0 and second.returncode == 0, (err_first, err_second)
    (s1, e1), (s2, e2) = spans(log)
    assert s2 >= e1, "the second build started before the first ended"
    assert "another build holds" in err_second and "build.lock" in err_second, err_second


def test_different_lock_names_do_not_wait_for_each_other(tmp_path: Path) -> None:
    log = tmp_path / "log"
    procs = [build(tmp_path, log), build(tmp_path, log, "build-image")]
    for p in procs:
        p.communicate(timeout=30)
    (s1, e1), (s2, e2) = spans(log)
    assert s2 < e1, "a build of another kind waited for the lock"


def test_a_script_run_by_the_holder_does_not_wait_for_its_parent(tmp_path: Path) -> None:
    log = tmp_path / "log"
    inner = f"cache_root={tmp_path}; source {REPO}/hack/build-lock.sh; build_lock; echo inner >> {log}"
    outer = (f'cache_root={tmp_path}; source {REPO}/hack/build-lock.sh; build_lock; bash -c {inner!r}; '
             f'echo outer >> {log}')  # fmt: skip
    done = subprocess.run(["bash", "-c", outer], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert log.read_text().split() == ["inner", "outer"]
