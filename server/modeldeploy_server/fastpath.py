"""The choice of the serving path for an sklearn model: its own method, or an exact fast path.

Owned here: `choose`, which builds each candidate of `candidates` (all exact by construction),
checks it once more against the artifact's own method on the verification rows of `verify`
(bit-identical on the whole block and on single rows, or it is rejected), times it, and returns
the fastest as a `Choice`; if none verifies, the artifact's method serves. It never mutates the
runtime: `runtime.Runtime.compile` applies the returned choice. Called by `runtime`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_server import candidates
from modeldeploy_server.candidates import Predict
from modeldeploy_server.contract import Contract, Matrix
from modeldeploy_server.verify import reference_rows

log = logging.getLogger("modeldeploy_server.fastpath")
REFERENCE = "sklearn"


@dataclass(frozen=True)
class Choice:
    """The serving path: its function, its name (`sklearn` = the artifact's own method) and why."""

    predict: Predict
    path: str
    notes: list[str] = field(default_factory=list)


def _same(reference: npt.NDArray[Any], candidate: npt.NDArray[Any]) -> bool:
    return (
        reference.shape == candidate.shape
        and reference.dtype == candidate.dtype
        and bool(np.array_equal(reference, candidate))
    )


def _timed(predict: Predict, row: Matrix) -> float:
    best = float("inf")
    for _ in range(20):
        started = time.perf_counter()
        predict(row)
        best = min(best, time.perf_counter() - started)
    return best


def choose(reference: Predict, model: Any, contract: Contract, method: str) -> Choice:
    """The fastest exact candidate that reproduces `reference` bit for bit, else `reference` itself."""
    rows = reference_rows(model, contract)
    expected = reference(rows)
    singles = [reference(rows[i : i + 1]) for i in range(min(len(rows), 32))]
    best, best_time, best_name = reference, _timed(reference, rows[:1]), REFERENCE
    notes: list[str] = []
    for name, build in candidates.candidates(model, method):
        try:
            predict = build()
            ok = _same(expected, predict(rows)) and all(
                _same(single, predict(rows[i : i + 1])) for i, single in enumerate(singles)
            )
        except Exception as exc:  # a candidate that cannot be built or run is simply not used
            notes.append(f"{name}: unavailable ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        if not ok:
            notes.append(f"{name}: rejected, does not reproduce the reference on {len(rows)} rows")
            continue
        seconds = _timed(predict, rows[:1])
        notes.append(f"{name}: verified on {len(rows)} rows, {seconds * 1e6:.0f} us/row")
        if seconds < best_time:
            best, best_time, best_name = predict, seconds, name
    if best_name == REFERENCE:
        notes.append(f"{REFERENCE}: the artifact's own method, {best_time * 1e6:.0f} us/row")
    return Choice(best, best_name, notes)
