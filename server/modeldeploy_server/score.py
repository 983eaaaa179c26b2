"""Batch scoring: `modeldeploy-server score --input rows.csv --output predictions.csv`.

Owned here: reading a CSV whose header names the features, applying the same artifact checks
(`runtime.load_runtime`) and the same input contract as the server, predicting every valid row,
and reporting every rejected row (row, feature, value, reason). Columns that are not features
(an id, say) are carried into the output unchanged. Exit status: 0 when every row was scored,
1 when rows were rejected (unless --allow-rejects), 2 when the artifact or the file is refused.
Called by `__main__`.
"""

from __future__ import annotations

import csv
import re
import sys
from collections import Counter
from typing import Any, TextIO

import numpy as np

from modeldeploy_server import logs
from modeldeploy_server.contract import Contract, Violation
from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.runtime import load_runtime
from modeldeploy_server.settings import Settings

CHUNK_ROWS = 10_000
# Plain ASCII decimal numbers (and nan/inf spelled out, which the contract then names): Python's
# float() also takes "1_000", full-width and Arabic-Indic digits, which no other CSV reader would
# read as these numbers.
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)", re.IGNORECASE | re.ASCII)


def _parse(contract: Contract, rows: list[dict[str, str]]) -> tuple[np.ndarray, list[Violation]]:
    x = np.full((len(rows), contract.width), np.nan, dtype=np.float64)
    found: list[Violation] = []
    for i, row in enumerate(rows):
        for j, spec in enumerate(contract.specs):
            cell = (row.get(spec.name) or "").strip()
            if cell == "":
                if spec.required:
                    found.append(Violation(i, spec.name, "null", "empty cell for a required feature"))
                continue
            if NUMBER.fullmatch(cell) is None:
                found.append(Violation(i, spec.name, "wrong_type", f"string {cell[:40]!r} is not a number"))
                continue
            x[i, j] = float(cell)
    return x, found


def _write_rejects(out: TextIO, rejected: list[Violation], rows: list[dict[str, str]]) -> None:
    writer = csv.writer(out)
    writer.writerow(["row", "feature", "value", "reason", "message"])
    for v in rejected:
        value = rows[v.row].get(v.feature, "") if v.feature and v.row is not None else ""
        writer.writerow([v.row, v.feature or "", value, v.reason, v.message()])


def score(settings: Settings, input_path: str, output_path: str, rejects_path: str | None, allow: bool) -> int:
    logs.configure(settings.log_level)
    runtime = load_runtime(settings)
    contract = runtime.contract
    try:
        with open(input_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LoadRefused(f"cannot read input CSV {input_path}: {exc}") from exc
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:  # a reader would keep one of the columns' values, silently: refuse the ambiguity
        raise LoadRefused(f"input CSV {input_path} repeats column(s) {repeated[:8]}; header: {header[:32]}")
    missing = [s.name for s in contract.specs if s.required and s.name not in header]
    if missing:
        raise LoadRefused(f"input CSV {input_path} lacks required feature column(s) {missing}; header: {header}")
    extra = [name for name in header if name not in contract.index]
    x, found = _parse(contract, rows)
    parsed_bad = {(v.row, v.feature) for v in found}
    found += [v for v in contract.violations(x) if (v.row, v.feature) not in parsed_bad]
    found.sort(key=lambda v: (v.row, contract.index.get(v.feature or "", -1)))
    bad_rows = {v.row for v in found}
    good = np.array([i for i in range(len(rows)) if i not in bad_rows], dtype=np.intp)
    outputs: list[Any] = []
    for start in range(0, len(good), CHUNK_ROWS):
        outputs.extend(runtime.predict(x[good[start : start + CHUNK_ROWS]]))
    with open(output_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        classes = runtime.classes if runtime.method == "predict_proba" else None
        width = len(np.atleast_1d(outputs[0])) if outputs else 1
        names = [f"{runtime.method}_{c}" for c in classes] if classes and len(classes) == width else None
        if names is None:
            names = [runtime.method] if width == 1 else [f"{runtime.method}_{k}" for k in range(width)]
        writer.writerow(["row", *extra, *names])
        for i, y in zip(good, outputs, strict=True):
            values = [repr(float(v)) if isinstance(v, float | np.floating) else str(v) for v in np.atleast_1d(y)]
            writer.writerow([int(i), *(rows[i].get(name, "") for name in extra), *values])
    first_per_row: dict[int | None, Violation] = {}
    for v in found:
        first_per_row.setdefault(v.row, v)
    if rejects_path:
        with open(rejects_path, "w", newline="", encoding="utf-8") as handle:
            _write_rejects(handle, found, rows)
    elif found:
        _write_rejects(sys.stderr, found, rows)
    reasons = Counter(v.reason for v in first_per_row.values())
    summary = f"scored {len(good)} of {len(rows)} rows; rejected {len(bad_rows)}"
    if reasons:
        summary += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items())) + ")"
    print(summary, file=sys.stderr)
    return 0 if not bad_rows or allow else 1
