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

from modeldeploy_operator.__main__ import limit_malloc_arenas

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
