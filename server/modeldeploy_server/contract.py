"""The input contract (`MODELDEPLOY_INPUTS`): turns request rows into a float64 matrix or refuses.

Owned here: the reasons a row is refused (`REASONS`, the `reason` label of
`modeldeploy_rejections_total`), type checks of JSON values (no strings, booleans, nulls), and the
vectorised value checks (NaN, +-inf, null sentinels, ranges). The happy path costs a handful of
numpy calls per request; only a refused request pays for locating the first violation. Called by
`protocol` (request bodies) and `score` (CSV rows, where every violation is reported).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_server.errors import ContractViolation
from modeldeploy_server.settings import InputSpec

Matrix = npt.NDArray[np.float64]
REASONS = (
    "null_sentinel", "nan", "infinite", "null", "wrong_type", "missing_feature", "unknown_feature",
    "out_of_range", "wrong_length", "empty", "shape_mismatch", "datatype_mismatch", "invalid_body",
    "duplicate_feature",
)  # fmt: skip
NUMBER_TYPES = frozenset((int, float))


@dataclass(frozen=True)
class Violation:
    row: int | None  # None: about the request as a whole, not one row
    feature: str | None
    reason: str
    detail: str

    def message(self) -> str:
        where = "request" if self.row is None else f"row {self.row}"
        where += f", feature {self.feature!r}" if self.feature is not None else ""
        return f"{where}: {self.detail} ({self.reason})"


def refuse(violations: Sequence[Violation]) -> ContractViolation:
    """The 422 for a list of violations: the first one named, the total counted."""
    first = violations[0]
    extra = f" [{len(violations)} violations in total]" if len(violations) > 1 else ""
    return ContractViolation(first.message() + extra, first.reason, first.row, first.feature)


def _type_detail(value: Any) -> tuple[str, str]:
    if value is None:
        return "null", "null is not a number"
    if isinstance(value, bool):
        return "wrong_type", f"boolean {str(value).lower()} is not a number"
    if isinstance(value, str):
        return "wrong_type", f"string {value[:40]!r} is not a number"
    return "wrong_type", f"{type(value).__name__} value is not a number"


class Contract:
    """The declared features, in model column order, with their checks precomputed as arrays."""

    def __init__(self, specs: Sequence[InputSpec]) -> None:
        self.specs = tuple(specs)
        self.names = tuple(s.name for s in specs)
        self.index = {name: j for j, name in enumerate(self.names)}
        self.width = len(specs)
        self.lo = np.array([-np.inf if s.min is None else s.min for s in specs], dtype=np.float64)
        self.hi = np.array([np.inf if s.max is None else s.max for s in specs], dtype=np.float64)
        self.sentinels = [(j, np.array(s.null_values, dtype=np.float64)) for j, s in enumerate(specs) if s.null_values]
        # all sentinels as (column, value) pairs: one vectorised comparison on the happy path
        self._sentinel_cols = np.array([j for j, s in self.sentinels for _ in s], dtype=np.intp)
        self._sentinel_vals = np.concatenate([s for _, s in self.sentinels]) if self.sentinels else np.empty(0)
        self._bounded = bool(np.isfinite(self.lo).all() and np.isfinite(self.hi).all())
        self.optional = np.array([not s.required for s in specs], dtype=bool)
        # the same checks as plain-Python tuples, for requests of a few rows (cheaper than numpy calls)
        self._fast = tuple(zip(self.lo.tolist(), self.hi.tolist(),
                               [frozenset(s.null_values) for s in specs], strict=True))  # fmt: skip
        self.any_optional = bool(self.optional.any())

    def reference_row(self) -> Matrix:
        """Mid-range of each declared feature (one bound: that bound; none: 0 clipped into range)."""
        both = np.isfinite(self.lo) & np.isfinite(self.hi)
        with np.errstate(invalid="ignore"):
            row = np.where(both, (self.lo + self.hi) / 2, np.clip(0.0, self.lo, self.hi))
        return row.reshape(1, -1).astype(np.float64)

    # -- parsing JSON values --------------------------------------------------------------------

    def from_lists(self, rows: list[Any], first_row: int = 0) -> Matrix:
        """Rows as lists in declared order. Missing optional values may be null (-> NaN)."""
        width = self.width
        for i, row in enumerate(rows):
            if type(row) is not list:
                detail = "rows must all be lists (row 0 is) or all be objects" if i else "a row must be a list"
                raise refuse([Violation(first_row + i, None, "wrong_type", detail)])
            if len(row) != width:
                detail = f"has {len(row)} values, expected {width} ({', '.join(self.names)})"
                raise refuse([Violation(first_row + i, None, "wrong_length", detail)])
        if set(map(type, chain.from_iterable(rows))) <= NUMBER_TYPES:
            try:
                return np.array(rows, dtype=np.float64).reshape(len(rows), width)
            except OverflowError:
                pass
        return self._slow_cells(rows, first_row)

    def _slow_cells(self, rows: list[list[Any]], first_row: int) -> Matrix:
        out = np.empty((len(rows), self.width), dtype=np.float64)
        for i, row in enumerate(rows):
            for j, value in enumerate(row):
                kind = type(value)
                if kind is float or kind is int:
                    try:
                        out[i, j] = value
                        continue
                    except OverflowError:
                        detail = "integer too large for a 64-bit float"
                        raise refuse([Violation(first_row + i, self.names[j], "out_of_range", detail)]) from None
                if value is None and self.optional[j]:
                    out[i, j] = np.nan
                    continue
                reason, detail = _type_detail(value)
                raise refuse([Violation(first_row + i, self.names[j], reason, detail)])
        return out

    def from_objects(self, rows: list[Any]) -> Matrix:
        """Rows as objects keyed by feature name (unknown keys, missing required features refused), checked."""
        names, index, specs = self.names, self.index, self.specs
        lists: list[list[Any]] = []
        for i, row in enumerate(rows):
            if type(row) is not dict:
                detail = "rows must all be objects (row 0 is) or all be lists"
                raise refuse([Violation(i, None, "wrong_type", detail)])
            if len(row) != self.width or any(key not in index for key in row):
                for key in row:
                    if key not in index:
                        detail = f"unknown feature; declared: {', '.join(names)}"
                        raise refuse([Violation(i, str(key)[:128], "unknown_feature", detail)])
                for spec in specs:
                    if spec.required and spec.name not in row:
                        raise refuse([Violation(i, spec.name, "missing_feature", "required feature is missing")])
            lists.append([row.get(name) for name in names])
        return self.parse_checked(lists)

    def parse_checked(self, rows: list[Any], first_row: int = 0) -> Matrix:
        """`from_lists` then `check`; a few rows of plain numbers are checked in Python first."""
        x = self.from_lists(rows, first_row)
        if len(rows) <= 8 and not self.any_optional:
            fast = self._fast
            for row in rows:
                for value, (lo, hi, sentinels) in zip(row, fast, strict=True):
                    # value - value == 0 is False for NaN and +-inf
                    if not (lo <= value <= hi and value - value == 0) or value in sentinels:
                        self.check(x)
                        return x
            return x
        self.check(x)
        return x

    # -- value checks ---------------------------------------------------------------------------

    def check(self, x: Matrix) -> None:
        """Refuse (422) if any cell is NaN, infinite, a null sentinel or out of range."""
        if x.shape[0] == 0:
            raise refuse([Violation(None, None, "empty", "no rows to predict")])
        # NaN fails both comparisons; with finite bounds on every feature, so does +-inf
        ok = bool(((x >= self.lo) & (x <= self.hi)).all()) and (self._bounded or bool(np.isfinite(x).all()))
        if ok and not (len(self._sentinel_vals) and (x[:, self._sentinel_cols] == self._sentinel_vals).any()):
            return
        found = self.violations(x)
        if found:
            raise refuse(found)

    def violations(self, x: Matrix, first_row: int = 0) -> list[Violation]:
        """Every bad cell, in row-major order, one reason per cell (sentinel before range)."""
        reason = np.full(x.shape, "", dtype=object)
        with np.errstate(invalid="ignore"):
            reason[(x < self.lo) | (x > self.hi)] = "out_of_range"
        for j, sentinel in self.sentinels:
            reason[np.isin(x[:, j], sentinel), j] = "null_sentinel"
        reason[np.isinf(x)] = "infinite"
        reason[np.isnan(x) & ~self.optional] = "nan"
        found = []
        for i, j in zip(*np.nonzero(reason != ""), strict=True):
            value, name, why = float(x[i, j]), self.names[j], str(reason[i, j])
            found.append(Violation(first_row + int(i), name, why, self._detail(why, value, int(j))))
        return found

    def _detail(self, reason: str, value: float, j: int) -> str:
        if reason == "out_of_range":
            lo, hi = self.specs[j].min, self.specs[j].max
            bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
            return f"value {value!r} is outside the declared range {bounds}"
        if reason == "null_sentinel":
            return f"value {value!r} is a declared null sentinel (no measurement)"
        if reason == "infinite":
            return f"value {value!r} is infinite"
        return "value is NaN"
