"""The choice of the serving path for an sklearn model: its own method, or an exact fast path.

Owned here: `choose`, which builds each candidate of `candidates` (all exact by construction),
checks it once more against the artifact's own method on the verification rows of `verify`
(bit-identical on the whole block and on single rows, or it is rejected), times it on those same
single-row calls (the fastest of each, the reference's too, so no call is made only to time it),
and returns the fastest as a `Choice`; if none verifies, the artifact's method serves. It never mutates the
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
SINGLES = 32  # rows predicted alone: each candidate must match the reference on each, and is timed on them


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


def _singles(predict: Predict, rows: Matrix, count: int) -> tuple[list[npt.NDArray[Any]], float]:
    """`predict` on each of the first `count` rows alone, and the fastest of those calls (seconds):
    the single-row answers a candidate must reproduce, and the single-row time the choice compares."""
    answers, best = [], float("inf")
    for i in range(count):
        started = time.perf_counter()
        answers.append(predict(rows[i : i + 1]))
        best = min(best, time.perf_counter() - started)
    return answers, best


def choose(reference: Predict, model: Any, contract: Contract, method: str) -> Choice:
    """The fastest exact candidate that reproduces `reference` bit for bit, else `reference` itself."""
    rows = reference_rows(model, contract)
    expected = reference(rows)
    count = min(len(rows), SINGLES)
    singles, best_time = _singles(reference, rows, count)
    best, best_name = reference, REFERENCE
    notes: list[str] = []
    for name, build in candidates.candidates(model, method):
        try:
            predict = build()
            ok = _same(expected, predict(rows))
            if ok:
                answers, seconds = _singles(predict, rows, count)
                ok = all(_same(single, answer) for single, answer in zip(singles, answers, strict=True))
        except Exception as exc:  # a candidate that cannot be built or run is simply not used
            notes.append(f"{name}: unavailable ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        if not ok:
            notes.append(f"{name}: rejected, does not reproduce the reference on {len(rows)} rows")
            continue
        notes.append(f"{name}: verified on {len(rows)} rows, {seconds * 1e6:.0f} us/row")
        if seconds < best_time:
            best, best_time, best_name = predict, seconds, name
    if best_name == REFERENCE:
        notes.append(f"{REFERENCE}: the artifact's own method, {best_time * 1e6:.0f} us/row")
    return Choice(best, best_name, notes)
