"""The operator caps glibc's malloc arenas: 16 API threads share 2 arenas instead of holding 16.

Observed the way glibc reports it: `malloc_info()` lists one `<heap nr=...>` per arena. Each case runs
in its own Python process, as the operator does (glibc sets its arena limit once per process)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modeldeploy_operator.__main__ import limit_malloc_arenas, start_malloc_trim

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_info")

THREADS = """
import ctypes, sys, threading
from modeldeploy_operator.__main__ import limit_malloc_arenas
print(limit_malloc_arenas() if sys.argv[1] == "operator" else "untouched", flush=True)
ready = threading.Barrier(17)
def work():
    held = [bytearray(4096) for _ in range(2000)]  # over pymalloc's 512 bytes: glibc's malloc
    ready.wait()
    ready.wait()
threads = [threading.Thread(target=work) for _ in range(16)]
for t in threads:
    t.start()
ready.wait()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
f = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(f))
libc.fclose(ctypes.c_void_p(f))
ready.wait()
"""


def arenas_with_16_threads(mode: str, tmp_path: Path, env: dict[str, str]) -> tuple[str, int]:
    info = tmp_path / f"{mode}.xml"
    out = subprocess.run([sys.executable, "-c", THREADS, mode, str(info)], env=env, capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    return out.stdout.strip(), len(re.findall(r"<heap nr=", info.read_text()))


def test_the_operator_runs_16_threads_on_2_arenas_where_glibc_would_give_more(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    said, capped = arenas_with_16_threads("operator", tmp_path, env)
    _, default = arenas_with_16_threads("default", tmp_path, env)
    assert said == "2" and capped <= 2, (said, capped)
    assert default > 2, f"glibc's default gave {default} arenas for 16 threads: the cap is not what saves memory"


def test_a_malloc_arena_max_the_user_set_is_left_as_it_is(tmp_path: Path) -> None:
    assert limit_malloc_arenas({"MALLOC_ARENA_MAX": "4"}) is None
    said, arenas = arenas_with_16_threads("operator", tmp_path, {**os.environ, "MALLOC_ARENA_MAX": "4"})
    assert said == "None" and 2 < arenas <= 4, (said, arenas)


HOLES = """
import sys, time
from prometheus_client import REGISTRY
from modeldeploy_operator.__main__ import start_malloc_trim
def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS"))
big, small = [], []
for _ in range(3000):  # 64 KiB blocks (glibc's heap, below its mmap threshold), each under a live 600-byte one
    big.append(bytes(65536))
    small.append(bytes(600))
held = rss_mib()
del big  # 190 MB free, but every hole lies below a live block: nothing is at the heap's top to give back
thread = start_malloc_trim(0.2) if sys.argv[1] == "operator" else None
time.sleep(1.0)
trims = REGISTRY.get_sample_value("modeldeploy_operator_malloc_trim_seconds_count")
print(held, rss_mib(), thread is not None and thread.daemon, trims, flush=True)
"""


@pytest.mark.parametrize("mode", ["operator", "untouched"])
def test_the_operator_gives_freed_heap_pages_back_where_glibc_would_keep_them(mode: str) -> None:
    out = subprocess.run([sys.executable, "-c", HOLES, mode], capture_output=True, text=True, timeout=60, check=True)
    held, after, trimming, trims = out.stdout.split()
    held_mib, after_mib = float(held), float(after)
    assert held_mib > 190, f"the workload did not hold its blocks: {held_mib:.0f} MiB"
    if mode == "operator":
        assert trimming == "True" and float(trims) >= 1, (trimming, trims)  # timed in /metrics
        assert after_mib < held_mib - 100, f"{held_mib:.0f} MiB before the trims, {after_mib:.0f} after"
    else:  # the premise: without a trim glibc keeps the freed blocks resident
        assert float(trims) == 0
        assert after_mib > held_mib - 30, f"glibc gave back memory by itself: {held_mib:.0f} -> {after_mib:.0f} MiB"


def test_a_trim_period_of_0_starts_no_thread() -> None:
    assert start_malloc_trim(0) is None
