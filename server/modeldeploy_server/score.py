"""Batch scoring: `modeldeploy-server score`, one file or one shard of a scheduled run.

Owned here: reading CSV (a header names the features) or Parquet, applying the same artifact checks
(`runtime.load_runtime`) and the same input contract as the server, predicting every valid row with
the same function as the server (`Runtime.predict`: the verified fast path or the artifact's own
method, chosen by `fastpath`), and reporting every rejected row (row, feature, value, reason).
Columns that are not features (an id, say) are carried into the output unchanged.

Two modes. One file: `--input rows.csv --output predictions.csv`. A shard of a run (`--shards N`):
the input URI (file://, http(s)://, s3://) is split into N contiguous row ranges (Parquet reads only
the row groups that overlap its range) and shard `JOB_COMPLETION_INDEX` (or `--shard`) writes, under
the output prefix (file:// or s3://), `runs/<run>/part-<i>.{csv,parquet}`, `rejects-<i>.csv` and
`report-<i>.json`. Every object is written atomically (temporary name and rename; an S3 PUT). The
shard that finds every shard's report (of this attempt: the Job's uid, `MODELDEPLOY_BATCH_ATTEMPT`, so
an earlier Job re-created under the same name never counts) writes `runs/<run>/_SUCCESS` and then
`<output>/_SUCCESS`, the manifest readers start from: it names the run and its parts, so a run that
failed anywhere never replaces the last complete result. The shard's summary also goes to the termination log (the
operator reads it from the pod's status).
Exit status: 0 when every row was scored, 1 when rows were rejected (unless --allow-rejects), 2 when
the artifact, the input or the output is refused, 3 on an unexpected error. Called by `__main__`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import unquote, urlsplit

import numpy as np

from modeldeploy_server import logs, storage
from modeldeploy_server.contract import Contract, Violation
from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.fetch import download
from modeldeploy_server.runtime import Runtime, load_runtime
from modeldeploy_server.settings import Settings

CHUNK_ROWS = 10_000
PARQUET_MAGIC = b"PAR1"
TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LIMIT = 4000  # the kubelet keeps at most 4096 bytes
# Plain ASCII decimal numbers (and nan/inf spelled out, which the contract then names): Python's
# float() also takes "1_000", full-width and Arabic-Indic digits, which no other CSV reader would
# read as these numbers.
NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)", re.IGNORECASE | re.ASCII)


def _parse_cell(cell: str, name: str, row: int, required: bool, found: list[Violation]) -> float:
    cell = cell.strip()
    if cell == "":
        if required:
            found.append(Violation(row, name, "null", "empty cell for a required feature"))
        return np.nan
    if NUMBER.fullmatch(cell) is None:
        found.append(Violation(row, name, "wrong_type", f"string {cell[:40]!r} is not a number"))
        return np.nan
    return float(cell)


@dataclass
class Table:
    """Rows of one input (or one shard of it): the header, the feature cells as text or arrow columns."""

    header: list[str]
    length: int
    offset: int = 0  # the first row's number in the whole input
    csv_rows: list[dict[str, str]] | None = None
    arrow: Any = None  # a pyarrow.Table

    def matrix(self, contract: Contract) -> tuple[np.ndarray, list[Violation]]:
        x = np.full((self.length, contract.width), np.nan, dtype=np.float64)
        found: list[Violation] = []
        for j, spec in enumerate(contract.specs):
            if spec.name not in self.header:
                continue  # an optional feature absent from the file: NaN
            if self.csv_rows is not None:
                for i, row in enumerate(self.csv_rows):
                    x[i, j] = _parse_cell(row.get(spec.name) or "", spec.name, i, spec.required, found)
            else:
                self._arrow_column(x, j, spec.name, spec.required, found)
        return x, found

    def _arrow_column(self, x: np.ndarray, j: int, name: str, required: bool, found: list[Violation]) -> None:
        import pyarrow as pa

        column = self.arrow.column(name)
        kind = column.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
            values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
            x[:, j] = values
            if required and column.null_count:
                nulls = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
                found += [Violation(int(k), name, "null", "null cell for a required feature") for k in nulls]
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            for i, cell in enumerate(column.to_pylist()):
                x[i, j] = _parse_cell(cell or "", name, i, required, found)
        else:
            for i, cell in enumerate(column.to_pylist()):
                if cell is None:
                    if required:
                        found.append(Violation(i, name, "null", "null cell for a required feature"))
                else:
                    found.append(Violation(i, name, "wrong_type", f"{kind} value {str(cell)[:40]!r} is not a number"))

    def texts(self, name: str) -> list[str]:
        """A carried-through column as text (CSV output)."""
        if self.csv_rows is not None:
            return [row.get(name, "") for row in self.csv_rows]
        return ["" if v is None else str(v) for v in self.arrow.column(name).to_pylist()]


def _check_header(header: list[str], contract: Contract, source: str) -> None:
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:  # a reader would keep one of the columns' values, silently: refuse the ambiguity
        raise LoadRefused(f"input {source} repeats column(s) {repeated[:8]}; header: {header[:32]}")
    missing = [s.name for s in contract.specs if s.required and s.name not in header]
    if missing:
        raise LoadRefused(f"input {source} lacks required feature column(s) {missing}; header: {header[:32]}")


def read_csv(path: Path, source: str, shard: int = 0, shards: int = 1) -> Table:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LoadRefused(f"cannot read input CSV {source}: {exc}") from exc
    lo, hi = shard_range(len(rows), shard, shards)
    return Table(header, hi - lo, lo, csv_rows=rows[lo:hi])


def read_parquet(path: Path, source: str, shard: int = 0, shards: int = 1) -> Table:
    """The shard's row range, reading only the row groups that overlap it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
        meta = handle.metadata
        lo, hi = shard_range(meta.num_rows, shard, shards)
        groups, first, start = [], None, 0
        for g in range(meta.num_row_groups):
            end = start + meta.row_group(g).num_rows
            if start < hi and end > lo:
                groups.append(g)
                first = start if first is None else first
            start = end
        header = list(handle.schema_arrow.names)
        table = handle.read_row_groups(groups) if groups else handle.schema_arrow.empty_table()
    except (OSError, pa.ArrowException) as exc:
        raise LoadRefused(f"cannot read input Parquet {source}: {exc}") from exc
    table = table.slice(lo - (first or 0), hi - lo)
    return Table(header, hi - lo, lo, arrow=table)


def shard_range(rows: int, shard: int, shards: int) -> tuple[int, int]:
    """Contiguous, balanced row ranges: shard i of n gets rows [rows*i//n, rows*(i+1)//n)."""
    return rows * shard // shards, rows * (shard + 1) // shards


def is_parquet(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) == PARQUET_MAGIC


@dataclass
class Scored:
    """The outcome of scoring one table."""

    good: np.ndarray
    outputs: np.ndarray  # one row (or one value) per good row
    found: list[Violation]
    bad_rows: set[int | None]
    names: list[str]
    extra: list[str]
    reasons: Counter[str] = field(default_factory=Counter)


def _suspect_rows(contract: Contract, x: np.ndarray) -> np.ndarray:
    """Rows with any cell the contract may refuse (vectorised; the happy path costs a few array passes)."""
    with np.errstate(invalid="ignore"):
        ok = (x >= contract.lo) & (x <= contract.hi)
    ok |= np.isnan(x) & contract.optional  # an absent optional feature
    ok &= ~np.isinf(x)
    for j, sentinels in contract.sentinels:
        ok[:, j] &= ~np.isin(x[:, j], sentinels)
    return np.flatnonzero(~ok.all(axis=1))


def score_table(runtime: Runtime, table: Table, source: str) -> Scored:
    contract = runtime.contract
    _check_header(table.header, contract, source)
    x, found = table.matrix(contract)
    parsed_bad = {(v.row, v.feature) for v in found}
    suspects = _suspect_rows(contract, x)  # only these are examined cell by cell
    for v in contract.violations(x[suspects]):
        row = int(suspects[v.row]) if v.row is not None else None
        if (row, v.feature) not in parsed_bad:
            found.append(Violation(row, v.feature, v.reason, v.detail))
    found.sort(key=lambda v: (v.row if v.row is not None else -1, contract.index.get(v.feature or "", -1)))
    bad_rows = {v.row for v in found}
    keep = np.ones(table.length, dtype=bool)
    keep[[r for r in bad_rows if r is not None]] = False
    good = np.flatnonzero(keep)
    chunks = [runtime.predict(x[good[start : start + CHUNK_ROWS]]) for start in range(0, len(good), CHUNK_ROWS)]
    outputs: Any = np.concatenate(chunks) if chunks else np.empty(0)
    classes = runtime.classes if runtime.method == "predict_proba" else None
    width = 1 if outputs.ndim < 2 else outputs.shape[1]
    names = [f"{runtime.method}_{c}" for c in classes] if classes and len(classes) == width else None
    if names is None:
        names = [runtime.method] if width == 1 else [f"{runtime.method}_{k}" for k in range(width)]
    first_per_row: dict[int | None, Violation] = {}
    for v in found:
        first_per_row.setdefault(v.row, v)
    extra = [name for name in table.header if name not in contract.index]
    reasons = Counter(v.reason for v in first_per_row.values())
    return Scored(good, outputs, found, bad_rows, names, extra, reasons)


def _text(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float | np.floating) else str(value)


def write_csv(handle: TextIO, table: Table, scored: Scored) -> None:
    writer = csv.writer(handle)
    writer.writerow(["row", *scored.extra, *scored.names])
    carried = [table.texts(name) for name in scored.extra]
    for i, y in zip(scored.good, scored.outputs, strict=True):
        values = [_text(v) for v in np.atleast_1d(y)]
        writer.writerow([table.offset + int(i), *(c[i] for c in carried), *values])


def parquet_bytes(table: Table, scored: Scored) -> bytes:
    """The predictions as Parquet: row, the carried columns (their own types), one column per output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, Any] = {"row": pa.array(table.offset + scored.good.astype(np.int64), type=pa.int64())}
    for name in scored.extra:
        columns[name] = table.arrow.column(name).take(pa.array(scored.good, type=pa.int64()))
    width = len(scored.names)
    outputs = np.asarray(scored.outputs).reshape(len(scored.good), -1) if len(scored.good) else np.empty((0, width))
    for k, name in enumerate(scored.names):
        columns[name] = pa.array(outputs[:, k])
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def write_rejects(out: TextIO, table: Table, found: Sequence[Violation]) -> None:
    writer = csv.writer(out)
    writer.writerow(["row", "feature", "value", "reason", "message"])
    cache: dict[str, list[str]] = {}
    for v in found:
        value = ""
        if v.feature and v.row is not None and v.feature in table.header:
            value = cache.setdefault(v.feature, table.texts(v.feature))[v.row]
        row = None if v.row is None else table.offset + v.row
        writer.writerow([row, v.feature or "", value, v.reason, v.message()])


def _summary(table: Table, scored: Scored) -> str:
    line = f"scored {len(scored.good)} of {table.length} rows; rejected {len(scored.bad_rows)}"
    if scored.reasons:
        line += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(scored.reasons.items())) + ")"
    return line


def score(settings: Settings, input_path: str, output_path: str, rejects_path: str | None, allow: bool) -> int:
    """One local file (CSV or Parquet) -> one predictions file (the same format) and a rejects report."""
    logs.configure(settings.log_level)
    runtime = load_runtime(settings)
    path = Path(input_path)
    try:
        parquet = is_parquet(path)
    except OSError as exc:
        raise LoadRefused(f"cannot read input {input_path}: {exc.strerror or exc}") from exc
    table = read_parquet(path, input_path) if parquet else read_csv(path, input_path)
    scored = score_table(runtime, table, input_path)
    if parquet:
        Path(output_path).write_bytes(parquet_bytes(table, scored))
    else:
        with open(output_path, "w", newline="", encoding="utf-8") as handle:
            write_csv(handle, table, scored)
    if rejects_path:
        with open(rejects_path, "w", newline="", encoding="utf-8") as handle:
            write_rejects(handle, table, scored.found)
    elif scored.found:
        write_rejects(sys.stderr, table, scored.found)
    print(_summary(table, scored), file=sys.stderr)
    return 0 if not scored.bad_rows or allow else 1


# ---- one shard of a run ----------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    input: str
    output: str
    index: int
    count: int
    run: str
    allow_rejects: bool
    termination_log: str | None = TERMINATION_LOG
    attempt: str = ""  # the Job's uid: a run re-run under the same name is another attempt


def _fetch_input(settings: Settings, uri: str, workdir: Path) -> Path:
    if uri.startswith("file://"):
        return Path(unquote(urlsplit(uri).path))
    if "://" not in uri:
        return Path(uri)
    return download(settings, uri, workdir / "input", "batch input")


def _terminate(shard: Shard, report: dict[str, Any]) -> None:
    """The report, shortened to what the kubelet keeps, as the container's termination message."""
    if not shard.termination_log or not os.path.exists(shard.termination_log):
        return
    brief = {k: v for k, v in report.items() if k not in ("reasonsTop",)}
    text = json.dumps(brief, separators=(",", ":"))
    if len(text) > TERMINATION_LIMIT:
        brief["message"] = str(brief.get("message", ""))[:200]
        brief.pop("reasons", None)
        text = json.dumps(brief, separators=(",", ":"))[:TERMINATION_LIMIT]
    try:
        with open(shard.termination_log, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError:
        pass  # not in a pod: the report under the output prefix and stderr still say it


def _name(kind: str, shard: Shard, ext: str) -> str:
    return f"runs/{shard.run}/{kind}-{shard.index:05d}.{ext}"


def _complete_run(settings: Settings, shard: Shard, report: dict[str, Any]) -> bool:
    """Write the run's `_SUCCESS` and then the output's, if every shard's report is there (last one wins)."""
    reports = []
    for k in range(shard.count):
        uri = storage.join(shard.output, f"runs/{shard.run}/report-{k:05d}.json")
        data = storage.read(settings, uri)
        if data is None:
            return False
        report_k = json.loads(data)
        if report_k.get("attempt", "") != shard.attempt:
            return False  # an earlier Job's report under the same run name: that shard has not succeeded yet
        reports.append(report_k)
    manifest = {
        "run": shard.run,
        "attempt": shard.attempt,
        "complete": True,
        "revision": report["revision"],
        "version": report["version"],
        "sha256": report["sha256"],
        "input": shard.input,
        "shards": shard.count,
        "rows": sum(int(r["rows"]) for r in reports),
        "scored": sum(int(r["scored"]) for r in reports),
        "rejected": sum(int(r["rejected"]) for r in reports),
        "parts": [r["part"] for r in reports],
        "rejects": [r["rejects"] for r in reports],
        "reports": [f"runs/{shard.run}/report-{k:05d}.json" for k in range(shard.count)],
    }
    body = json.dumps(manifest, indent=1).encode()
    storage.write(settings, storage.join(shard.output, f"runs/{shard.run}/_SUCCESS"), body)
    storage.write(settings, storage.join(shard.output, "_SUCCESS"), body)
    return True


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere): the interpreter and the
    imports before the first line of a shard's own work."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class Phases:
    """Where a shard's seconds went, in the order they are spent (the report's `phases`)."""

    def __init__(self, report: dict[str, Any]) -> None:
        age = process_age()
        self.times: dict[str, float] = {} if age is None else {"start": round(age, 3)}
        report["phases"] = self.times
        self.last = time.monotonic()

    def done(self, name: str) -> None:
        now = time.monotonic()
        self.times[name] = round(now - self.last, 3)
        self.last = now


def score_shard(settings: Settings, shard: Shard) -> int:
    """Score shard `index` of `count`; write its part, rejects and report; complete the run if last.
    The report's `phases` says where the seconds went: `start` (interpreter and imports, before
    `seconds` starts counting), `load` (fetch, digest, load, serving path), `read`, `score`, `write`."""
    logs.configure(settings.log_level)
    started = time.monotonic()
    report: dict[str, Any] = {
        "run": shard.run, "attempt": shard.attempt, "shard": shard.index, "shards": shard.count,
        "revision": settings.model_revision,
        "version": settings.model_version, "sha256": settings.model_sha256, "rows": 0, "scored": 0,
        "rejected": 0, "outcome": "Failed",
    }  # fmt: skip
    code = 2
    phases = Phases(report)
    try:
        if not 0 <= shard.index < shard.count:
            raise LoadRefused(f"shard index {shard.index} is outside 0..{shard.count - 1} (--shards {shard.count})")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", shard.run):
            raise LoadRefused(f"run id {shard.run!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        storage.check_output(shard.output)
        runtime = load_runtime(settings)
        report.update(sha256=runtime.sha256, path=runtime.path)
        phases.done("load")
        with tempfile.TemporaryDirectory(prefix="modeldeploy-score-") as workdir:
            path = _fetch_input(settings, shard.input, Path(workdir))
            try:
                parquet = is_parquet(path)
            except OSError as exc:
                raise LoadRefused(f"cannot read input {shard.input}: {exc.strerror or exc}") from exc
            reader = read_parquet if parquet else read_csv
            table = reader(path, shard.input, shard.index, shard.count)
            phases.done("read")
            scored = score_table(runtime, table, shard.input)
            phases.done("score")
        if parquet:
            part_name, data = _name("part", shard, "parquet"), parquet_bytes(table, scored)
        else:
            buffer = io.StringIO()
            write_csv(buffer, table, scored)
            part_name, data = _name("part", shard, "csv"), buffer.getvalue().encode()
        rejects = io.StringIO()
        write_rejects(rejects, table, scored.found)
        rejected = len(scored.bad_rows)
        code = 1 if rejected and not shard.allow_rejects else 0
        report.update(
            rows=table.length, scored=len(scored.good), rejected=rejected, firstRow=table.offset,
            reasons=dict(sorted(scored.reasons.items())), part=part_name, rejects=_name("rejects", shard, "csv"),
            outcome="Succeeded" if code == 0 else "Rejected",
        )  # fmt: skip
        if code:
            first = scored.found[0]
            where = Violation(None if first.row is None else table.offset + first.row, first.feature, first.reason,
                              first.detail)  # fmt: skip
            report["message"] = (
                f"{rejected} of {table.length} rows rejected and allowRejects is false; first: {where.message()}"
            )
        storage.write(settings, storage.join(shard.output, part_name), data)
        storage.write(settings, storage.join(shard.output, report["rejects"]), rejects.getvalue().encode())
        phases.done("write")
        report["seconds"] = round(time.monotonic() - started, 3)
        # a shard that did not succeed writes its report under another name: the run stays incomplete
        kind = "report" if code == 0 else "report-failed"
        storage.write(settings, storage.join(shard.output, _name(kind, shard, "json")), json.dumps(report).encode())
        print(_summary(table, scored), file=sys.stderr)
        if code == 0:
            report["complete"] = _complete_run(settings, shard, report)
        return code
    except LoadRefused as exc:
        report.update(outcome="Failed", message=str(exc))
        raise
    except Exception as exc:  # whatever broke, the shard fails with one line and the pod says why
        report.update(outcome="Failed", message=f"{type(exc).__name__}: {exc}")
        print(f"modeldeploy-server: score failed: {report['message']}", file=sys.stderr)
        return 3
    finally:
        report["seconds"] = round(time.monotonic() - started, 3)
        _terminate(shard, report)
