"""Building a reference profile from training data and the artifact (`modeldeploy profile`).

Owned here: reading the training rows (CSV or Parquet), keeping the rows
the input contract accepts (the server would refuse the others, so they are not what the model
serves), predicting them with the artifact's own method (loaded and digest-verified as the server
loads it) and writing the profile (`profile.build`) in canonical bytes, whose SHA-256 goes into
`spec.model.reference.sha256`. Called by the operator's CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modeldeploy_server import profile
from modeldeploy_server.contract import Contract
from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.runtime import load_runtime
from modeldeploy_server.score import CHUNK_ROWS, is_parquet, read_csv, read_parquet
from modeldeploy_server.settings import Settings


@dataclass(frozen=True)
class Built:
    data: bytes  # the profile, canonical JSON
    sha256: str
    rows: int  # training rows profiled
    dropped: int  # rows the input contract refuses (not profiled)


def _read(path: str, contract: Contract) -> np.ndarray:
    """The training rows (CSV, or Parquet by its magic bytes) as a matrix; unusable cells are NaN."""
    file = Path(path)
    try:
        table = (read_parquet if is_parquet(file) else read_csv)(file, path)
    except OSError as exc:
        raise LoadRefused(f"cannot read training data {path}: {exc.strerror or exc}") from exc
    missing = [s.name for s in contract.specs if s.required and s.name not in table.header]
    if missing:
        raise LoadRefused(f"training data {path} lacks feature column(s) {missing}; header: {table.header[:32]}")
    x, _ = table.matrix(contract)  # a cell that is not a number stays NaN: its row is dropped
    return x


def build(settings: Settings, data_path: str, bins: int = profile.DEFAULT_BINS) -> Built:
    """The profile of the rows in `data_path` as the model in `settings` sees and answers them."""
    if not 2 <= bins <= profile.MAX_BINS:
        raise LoadRefused(f"bins = {bins}: must be within [2, {profile.MAX_BINS}]")
    runtime = load_runtime(settings, compile_now=False)
    contract = runtime.contract
    x = _read(data_path, contract)
    bad = {v.row for v in contract.violations(x)}
    bad |= {i for i in range(len(x)) if np.isnan(x[i, ~contract.optional]).any()}
    keep = np.array([i for i in range(len(x)) if i not in bad], dtype=np.intp)
    if len(keep) == 0:
        raise LoadRefused(f"training data {data_path}: no row passes the input contract ({len(x)} rows read)")
    rows = x[keep]
    y = np.concatenate([np.asarray(runtime.reference(rows[s : s + CHUNK_ROWS])) for s in range(0, len(rows),
                                                                                              CHUNK_ROWS)])  # fmt: skip
    try:
        data = profile.dumps(profile.build(rows, contract.names, y, runtime.classes, bins))
    except profile.ProfileError as exc:
        raise LoadRefused(str(exc)) from exc
    return Built(data, profile.sha256(data), len(rows), len(x) - len(rows))
