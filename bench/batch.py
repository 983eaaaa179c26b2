"""Batch scoring throughput: `modeldeploy-server score --shards N` against in-process `model.predict`.

A 1,000,000-row Parquet file (iris-shaped rows spread over the contract's ranges, 10 row groups) and
the 100-tree `RandomForestClassifier` of the server benchmark, saved with joblib. Measured, each the
median of `--rounds`:

- in-process: `model.predict_proba` on the whole matrix (the artifact's own method, one call);
- a plain script: what a team runs without modeldeploy, as a process of its own (start, imports,
  `joblib.load`, `pyarrow.parquet.read_table`, `predict_proba`, `write_table`), wall time;
- 1 shard: the real console script scoring all rows (process start, digest check, load, fast-path
  choice, Parquet read, contract check, prediction, Parquet write, report), wall time;
- 2 shards: two such processes at once (an Indexed Job with parallelism 2 on one node), wall time.

With `--image-venv` the shards (and the plain script) run from a virtual environment installed the
way the image installs it (hack/image-install.sh, the Dockerfile's runtime ENV): what a pod runs,
without the development environment's extras (pandas, which scikit-learn imports when it is there).

Prints a Markdown table (rows/s, ratios), whether the shards' predictions are bit-identical to
in-process `predict_proba`, and the median of each phase of the shards' reports (process start and
imports, load, read, score, write). Usage: `.venv/bin/python bench/batch.py [--rows N] [--rounds R] [--image-venv]`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _image_venv(venv: Path) -> dict[str, str]:
    """Install the package into `venv` as the image does; the image's runtime ENV pointed at it."""
    sys.path[:0] = [str(REPO), str(REPO / "hack")]
    from tests.packaging.image import image_env, install_image_venv

    started = time.perf_counter()
    install_image_venv(venv)
    print(f"image venv installed in {time.perf_counter() - started:.0f} s: {venv}", file=sys.stderr)
    return image_env(venv)


def _shards(venv: Path, n: int, env: dict[str, str], inp: Path, out: Path, run: str) -> float:
    args = [str(venv / "bin" / "modeldeploy-server"), "score", "--input", str(inp), "--output", out.as_uri(),
            "--shards", str(n), "--run-id", run]  # fmt: skip
    started = time.perf_counter()
    procs = [subprocess.Popen(args, env=env | {"JOB_COMPLETION_INDEX": str(i)}, stderr=subprocess.PIPE)
             for i in range(n)]  # fmt: skip
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"shard failed: {err.decode()[-500:]}")
    return time.perf_counter() - started


SCRIPT = """
import sys
import joblib, numpy as np, pyarrow as pa, pyarrow.parquet as pq
model = joblib.load(sys.argv[1])
table = pq.read_table(sys.argv[2])
proba = model.predict_proba(np.column_stack([table.column(n).to_numpy() for n in table.column_names]))
pq.write_table(pa.table({f"predict_proba_{c}": proba[:, c] for c in range(proba.shape[1])}), sys.argv[3])
"""


def _script(python: Path, env: dict[str, str], artifact: Path, inp: Path, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([str(python), "-c", SCRIPT, str(artifact), str(inp), str(out)], check=True, env=env)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-venv", action="store_true", help="shards and script from the image's venv")
    a = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="modeldeploy-batch-bench-"))
    x_iris, y_iris = load_iris(return_X_y=True)
    model = RandomForestClassifier(n_estimators=100, random_state=0).fit(x_iris, y_iris)
    artifact = work / "forest.joblib"
    joblib.dump(model, artifact)
    rng = np.random.default_rng(0)
    x = np.round(rng.uniform(0.1, 8.0, size=(a.rows, 4)), 2)
    pq.write_table(pa.table({n: x[:, j] for j, n in enumerate(NAMES)}), work / "in.parquet",
                   row_group_size=a.rows // 10)  # fmt: skip
    inputs = [{"name": n, "min": 0, "max": 10} for n in NAMES]
    venv = work / "image-venv" if a.image_venv else BIN.parent
    base = _image_venv(venv) if a.image_venv else dict(os.environ)
    python = venv / "bin" / "python"
    env = {k: v for k, v in base.items() if not k.startswith("MODELDEPLOY_")} | {
        "MODELDEPLOY_MODEL_URI": artifact.as_uri(), "MODELDEPLOY_MODEL_SHA256": hashlib.sha256(
            artifact.read_bytes()).hexdigest(), "MODELDEPLOY_MODEL_METHOD": "predict_proba",
        "MODELDEPLOY_INPUTS": json.dumps(inputs), "MODELDEPLOY_CACHE_DIR": str(work / "cache"),
        "MODELDEPLOY_LOG_LEVEL": "warning",
    }  # fmt: skip
    inproc, script, one, two = [], [], [], []
    for r in range(a.rounds):
        started = time.perf_counter()
        expected = model.predict_proba(x)
        inproc.append(time.perf_counter() - started)
        script.append(_script(python, env, artifact, work / "in.parquet", work / "script.parquet"))
        one.append(_shards(venv, 1, env, work / "in.parquet", work / "out1", f"r{r}"))
        two.append(_shards(venv, 2, env, work / "in.parquet", work / "out2", f"r{r}"))
    manifest = json.loads((work / "out2" / "_SUCCESS").read_text())
    got = pa.concat_tables([pq.read_table(work / "out2" / p) for p in manifest["parts"]])
    proba = np.column_stack([got.column(f"predict_proba_{c}").to_numpy() for c in range(3)])
    identical = bool(np.array_equal(proba, expected))
    mine = pq.read_table(work / "script.parquet")
    if not np.array_equal(np.column_stack([c.to_numpy() for c in mine.columns]), expected):
        raise SystemExit("the plain script's predictions differ from in-process predict_proba")
    path = json.loads((work / "out2" / "runs" / f"r{a.rounds - 1}" / "report-00000.json").read_text())["path"]
    t0, ts, t1, t2 = median(inproc), median(script), median(one), median(two)
    load = os.getloadavg()
    where = "the image's venv" if a.image_venv else "the development venv"
    print(f"rows {a.rows}, rounds {a.rounds}, cores {os.cpu_count()}, load average {load[0]:.1f}/{load[1]:.1f}, "
          f"shards and script from {where} ({python})")  # fmt: skip
    print("| run | seconds | rows/s | vs in-process | vs a plain script |")
    print("|---|---:|---:|---:|---:|")
    print(f"| in-process `predict_proba` (1 call) | {t0:.2f} | {a.rows / t0:,.0f} | 1.00 | {ts / t0:.2f} |")
    print(
        f"| a plain script (start, load, read, predict_proba, write) | {ts:.2f} | {a.rows / ts:,.0f} "
        f"| {t0 / ts:.2f} | 1.00 |"
    )
    print(f"| `score`, 1 shard (`{path}`) | {t1:.2f} | {a.rows / t1:,.0f} | {t0 / t1:.2f} | {ts / t1:.2f} |")
    print(f"| `score`, 2 shards at once | {t2:.2f} | {a.rows / t2:,.0f} | {t0 / t2:.2f} | {ts / t2:.2f} |")
    print(f"2 shards / 1 shard: {t1 / t2:.2f}x; predictions bit-identical to in-process: {identical}")
    for n, out in ((1, "out1"), (2, "out2")):  # the shards' own reports: where the seconds went
        phases = [json.loads(p.read_text())["phases"] for p in sorted((work / out / "runs").glob("r*/report-*.json"))]
        mid = {k: median(ph[k] for ph in phases) for k in phases[0]}
        print(f"{n} shard(s), median seconds per shard: " + ", ".join(f"{k} {v:.2f}" for k, v in mid.items()))


if __name__ == "__main__":
    main()
