"""Wire formats: Open Inference Protocol v2 (JSON and the binary tensor extension) and v1 `instances`.

Owned here: JSON decoding (orjson; the standard library only to refuse duplicate object keys
exactly and to turn a Python client's `NaN`/`Infinity` tokens into 422 `nan`/`infinite` instead
of 400; only UTF-8 is JSON), the shape, datatype, nesting and naming rules of a V2 request, the
binary tensor extension (`Inference-Header-Content-Length`: a JSON header, then raw little-endian
tensors), the request-size bound (`max_rows`) and the response bodies. Every check costs time
linear in the body: shapes have at most `MAX_DIMS` entries, each below 2**64, before anything
multiplies them. Transport-free: called by `service`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modeldeploy_server.contract import NUMBER_TYPES, Contract, Matrix, Violation, refuse
from modeldeploy_server.errors import MalformedRequest, PayloadTooLarge

MAX_DIMS = 8
MAX_ID_CHARS = 256
# OIP numeric datatypes -> little-endian numpy dtype (binary extension; JSON values are range-checked)
DTYPES: dict[str, str] = {
    "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
    "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
    "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
}  # fmt: skip
NUMERIC_DATATYPES = frozenset(DTYPES)


@dataclass
class V2Request:
    """A parsed infer request: the checked matrix, the client's `id`, and how it wants the answer."""

    x: Matrix
    request_id: str | None = None
    binary_output: bool = False


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise MalformedRequest(f"duplicate JSON object key {key[:64]!r}: refusing an ambiguous body")
            seen.add(key)
    return obj


def _count_keys(value: Any) -> int:
    """Keys of the objects in `value` (lists are entered only when they hold objects): never too many."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            count += len(item)
            stack.extend(item.values())
        elif type(item) is list and item and type(item[0]) is dict:
            stack.extend(item)
    return count


def _strict(body: bytes, first_error: str) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRequest(f"malformed JSON: the body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        raise MalformedRequest(f"malformed JSON: {first_error or exc}") from None


def decode(body: bytes) -> Any:
    """Parse JSON (UTF-8 only; duplicate keys refused); 400 with the parser's reason when it is not JSON."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _strict(body, str(exc))
    # Each key has one ':' outside strings, so more ':' than distinct keys found means a duplicate
    # key (or a ':' inside a string, or an object inside a number list): then check exactly.
    if body.count(b":") != _count_keys(payload):
        _strict(body, "")
    return payload


def _invalid(detail: str) -> Exception:
    return refuse([Violation(None, None, "invalid_body", detail)])


def _check_rows(n_rows: int, max_rows: int) -> None:
    if n_rows > max_rows:
        raise PayloadTooLarge(f"request has {n_rows} rows; the limit is {max_rows} (MODELDEPLOY_MAX_REQUEST_ROWS)")


def parse_v1(contract: Contract, payload: Any, max_rows: int) -> Matrix:
    """`{"instances": [[...], ...]}` or `{"instances": [{"name": value, ...}, ...]}`."""
    if type(payload) is not dict or "instances" not in payload:
        raise _invalid('expected a JSON object with "instances": a list of rows')
    rows = payload["instances"]
    if type(rows) is not list:
        raise _invalid('"instances" must be a list of rows')
    if not rows:
        raise refuse([Violation(None, None, "empty", '"instances" is empty: no rows to predict')])
    _check_rows(len(rows), max_rows)
    return contract.from_objects(rows) if type(rows[0]) is dict else contract.parse_checked(rows)


# -- V2 tensors -----------------------------------------------------------------------------------


def _shape_error(name: str, detail: str) -> Exception:
    return refuse([Violation(None, None, "shape_mismatch", f"input {name[:64]!r}: {detail}")])


def _shape(name: str, shape: Any) -> tuple[list[int], int]:
    """A list of 1..MAX_DIMS sizes, each 0 <= d < 2**64 (checked before any multiplication)."""
    if type(shape) is not list or not 1 <= len(shape) <= MAX_DIMS:
        size = f"{len(shape)} entries" if type(shape) is list else type(shape).__name__
        raise _shape_error(name, f"shape must be a list of 1 to {MAX_DIMS} sizes, got {size}")
    for d in shape:
        if type(d) is not int or not 0 <= d < 2**64:
            raise _shape_error(name, f"shape {_short(shape)} holds {_short(d, 24)}, not a size in [0, 2**64)")
    return shape, math.prod(shape)


def _flatten(name: str, data: Any, shape: list[int]) -> list[Any]:
    """Flat data, or data nested exactly as `shape` (every list at depth k has shape[k] items)."""
    if type(data) is not list:
        raise _invalid(f"input {name[:64]!r}: tensor data must be a list")
    if not data or type(data[0]) is not list:
        return data
    level: list[Any] = [data]
    for depth, size in enumerate(shape):
        items: list[Any] = []
        for k, item in enumerate(level):
            if type(item) is not list or len(item) != size:
                got = f"{len(item)} items" if type(item) is list else "a value"
                where = f"data at depth {depth}, list {k}"
                raise _shape_error(name, f"{where} has {got} where shape {_short(shape)} needs {size}")
            items.extend(item)
        level = items
    return level


def _binary(name: str, params: Any, buffer: memoryview, offset: int, datatype: str, total: int) -> tuple[Any, int]:
    size = params.get("binary_data_size")
    if type(size) is not int or size < 0 or offset + size > len(buffer):
        detail = f"binary_data_size {_short(size, 24)} does not fit the {len(buffer) - offset} binary bytes left"
        raise MalformedRequest(f"input {name[:64]!r}: {detail}")
    dtype = np.dtype(DTYPES[datatype])
    if size != total * dtype.itemsize:
        detail = f"binary_data_size {size} is not {total} values of {datatype} ({total * dtype.itemsize} bytes)"
        raise _shape_error(name, detail)
    values = np.frombuffer(buffer[offset : offset + size], dtype=dtype)  # read-only: nothing writes to it
    return (values if values.dtype == np.float64 else values.astype(np.float64)), offset + size


Tensor = tuple[str, list[int], str, Any]  # name, shape, datatype, flat values (a list, or float64 array)


def _tensors(specs: list[Any], binary: memoryview | None, max_rows: int) -> list[Tensor]:
    tensors: list[Tensor] = []
    offset = 0
    for position, spec in enumerate(specs):
        if type(spec) is not dict:
            raise _invalid(f"inputs[{position}] must be an object with name, shape, datatype, data")
        name, datatype, params = spec.get("name"), spec.get("datatype"), spec.get("parameters") or {}
        if type(name) is not str or type(datatype) is not str or type(params) is not dict:
            raise _invalid(f"inputs[{position}] needs name (string), shape, datatype (string) and data")
        if any(t[0] == name for t in tensors):
            raise refuse([Violation(None, name[:128], "duplicate_feature", "input tensor appears more than once")])
        shape, total = _shape(name, spec.get("shape"))
        if datatype not in NUMERIC_DATATYPES:
            detail = f"input {name[:64]!r}: datatype {datatype[:16]!r} is not numeric (FP32, FP64, INT64, ...)"
            raise refuse([Violation(None, None, "datatype_mismatch", detail)])
        _check_rows(shape[0], max_rows)
        if "binary_data_size" in params:
            if binary is None:
                raise MalformedRequest(f"input {name[:64]!r} has binary_data_size but the request has no "
                                       "Inference-Header-Content-Length (binary tensor extension) header")  # fmt: skip
            if "data" in spec:
                raise MalformedRequest(f"input {name[:64]!r} has both data and binary_data_size")
            values, offset = _binary(name, params, binary, offset, datatype, total)
        else:
            if spec.get("data") is None:
                raise _invalid(f"inputs[{position}] needs data (or binary_data_size with the binary extension)")
            values = _flatten(name, spec["data"], shape)
            if len(values) != total:
                raise _shape_error(name, f"shape {_short(shape)} holds {total} values but data has {len(values)}")
        tensors.append((name, shape, datatype, values))
    if binary is not None and offset != len(binary):
        raise MalformedRequest(f"{len(binary) - offset} binary bytes after the last tensor's binary_data_size")
    return tensors


def _outputs(payload: dict[str, Any], output: str) -> bool:
    """Check the requested outputs (only `output` exists); True when the answer is to be binary."""
    params = payload.get("parameters") or {}
    if type(params) is not dict:
        raise MalformedRequest('"parameters" must be an object')
    binary = params.get("binary_data_output") is True
    requested = payload.get("outputs")
    if requested is None:
        return binary
    if type(requested) is not list:
        raise MalformedRequest('"outputs" must be a list of {"name": ...} objects')
    for item in requested:
        name = item.get("name") if type(item) is dict else None
        if name != output:
            raise MalformedRequest(f"unknown output {_short(name, 64)}; this model has one output {output!r}")
        item_params = item.get("parameters") or {}
        if type(item_params) is dict and "binary_data" in item_params:
            binary = item_params["binary_data"] is True
    return binary


def parse_v2(contract: Contract, payload: Any, max_rows: int, output: str, binary: bytes | None = None) -> V2Request:
    """One `[N, F]` tensor, or one `[N]`/`[N, 1]` tensor per declared feature (named after it)."""
    if type(payload) is not dict or type(payload.get("inputs")) is not list:
        raise _invalid('expected a JSON object with "inputs": a list of tensors')
    request_id = payload.get("id")
    if request_id is not None and (type(request_id) is not str or len(request_id) > MAX_ID_CHARS):
        raise MalformedRequest(f'"id" must be a string of at most {MAX_ID_CHARS} characters')
    binary_output = _outputs(payload, output)
    specs = payload["inputs"]
    if not specs:
        raise refuse([Violation(None, None, "empty", '"inputs" is empty')])
    tensors = _tensors(specs, None if binary is None else memoryview(binary), max_rows)
    width = contract.width
    if len(tensors) == 1 and tensors[0][0] not in contract.index or (width == 1 and len(tensors[0][1]) == 2):
        name, shape, datatype, flat = tensors[0]
        if len(shape) != 2 or shape[1] != width:
            detail = f"shape {_short(shape)}, expected [N, {width}] ({', '.join(contract.names)})"
            raise _shape_error(name, detail)
        if shape[0] == 0:
            raise refuse([Violation(None, None, "empty", f"input {name[:64]!r} has no rows")])
        if type(flat) is not list:  # binary: already float64
            x: Matrix = flat.reshape(shape[0], width)
        else:
            x = _fast_matrix(contract, flat, shape[0])  # type: ignore[assignment]
            if x is None:  # not all plain numbers: the row-wise path names the first bad cell
                x = contract.from_lists([flat[i * width : (i + 1) * width] for i in range(shape[0])])
        x = _datatypes(x, [datatype] * width, list(contract.names))
    else:
        x = _per_feature(contract, tensors)
    contract.check(x)  # after the datatype: the values the model will see
    return V2Request(x, request_id, binary_output)


def _fast_matrix(contract: Contract, flat: list[Any], n_rows: int) -> Matrix | None:
    """A flat tensor of plain numbers straight into numpy (no per-row lists); values checked later."""
    if not set(map(type, flat)) <= NUMBER_TYPES:
        return None
    try:
        return np.array(flat, dtype=np.float64).reshape(n_rows, contract.width)
    except OverflowError:
        return None


def _per_feature(contract: Contract, tensors: list[Tensor]) -> Matrix:
    by_name = {}
    for name, shape, datatype, flat in tensors:
        if name not in contract.index:
            detail = f"unknown input; declared: {', '.join(contract.names)}"
            raise refuse([Violation(None, name[:128], "unknown_feature", detail)])
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise _shape_error(name, f"shape {_short(shape)}, expected [N] or [N, 1]")
        by_name[name] = (shape[0], datatype, flat)
    for spec in contract.specs:
        if spec.name not in by_name and spec.required:
            raise refuse([Violation(None, spec.name, "missing_feature", "required input tensor is missing")])
    rows = {n for n, _, _ in by_name.values()}
    if len(rows) != 1:
        detail = f"input tensors have different row counts {sorted(rows)[:8]}"
        raise refuse([Violation(None, None, "shape_mismatch", detail)])
    n_rows = rows.pop()
    if n_rows == 0:
        raise refuse([Violation(None, None, "empty", "input tensors have no rows")])
    columns: list[list[Any]] = []
    for name in contract.names:
        values: Any = by_name[name][2] if name in by_name else [None] * n_rows
        columns.append(values if type(values) is list else values.tolist())
    x = contract.from_lists([list(row) for row in zip(*columns, strict=True)])
    datatypes = [by_name[name][1] if name in by_name else "FP64" for name in contract.names]
    return _datatypes(x, datatypes, list(contract.names))


FP_LIMITS = {"FP16": float(np.finfo(np.float16).max), "FP32": float(np.finfo(np.float32).max)}


def _datatypes(x: Matrix, datatypes: list[str], names: list[str]) -> Matrix:
    """Values must fit their declared datatype: integers whole and in range, FP16/FP32 finite values in
    range; FP16 values are rounded to FP16, as the client declared them."""
    rounded = False
    for column, (datatype, name) in enumerate(zip(datatypes, names, strict=True)):
        if datatype == "FP64":
            continue
        col = x[:, column]
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(col)
            if datatype in FP_LIMITS:
                bad = finite & (np.abs(col) > FP_LIMITS[datatype])
                what = f"a value beyond the {datatype} range"
            else:
                info = np.iinfo(np.dtype(DTYPES[datatype]))
                bad = finite & ((col != np.floor(col)) | (col < info.min) | (col > info.max))
                what = f"a value that is not an integer in [{info.min}, {info.max}]"
        if bad.any():
            row = int(np.nonzero(bad)[0][0])
            detail = f"declared {datatype} but holds {what}: {float(col[row])!r}"
            raise refuse([Violation(row, name, "datatype_mismatch", detail)])
        if datatype == "FP16":
            if not rounded:
                x, rounded = x.copy(), True
            x[:, column] = col.astype(np.float16)
    return x


# -- responses ------------------------------------------------------------------------------------


def canonical(y: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The output array in one of the datatypes the metadata can declare: FP64/FP32, INT64, BOOL or BYTES."""
    kind = y.dtype.kind
    if kind == "f":
        return y if y.dtype.itemsize in (4, 8) else y.astype(np.float64)
    if kind in "iu":
        return y.astype(np.int64, copy=False)
    if kind == "b":
        return y
    return np.array([str(v) for v in y.ravel()], dtype=object).reshape(y.shape)


def output_datatype(y: npt.NDArray[Any]) -> str:
    kind = y.dtype.kind
    if kind == "f":
        return "FP64" if y.dtype.itemsize == 8 else "FP32"
    if kind in "iu":
        return "INT64"
    if kind == "b":
        return "BOOL"
    return "BYTES"


def _raw(y: npt.NDArray[Any]) -> bytes:
    if y.dtype.kind == "O":  # BYTES: each element as a 4-byte little-endian length, then its bytes
        parts = []
        for value in y.ravel():
            encoded = str(value).encode()
            parts.append(len(encoded).to_bytes(4, "little") + encoded)
        return b"".join(parts)
    return np.ascontiguousarray(y, dtype=y.dtype.newbyteorder("<")).tobytes()


def v2_response(model: str, version: str, request_id: str, output: str, y: npt.NDArray[Any],
                binary: bool = False) -> tuple[bytes, int | None]:  # fmt: skip
    """The body, and the JSON header's length when the output is sent as binary data."""
    out: dict[str, Any] = {"name": output, "shape": list(y.shape), "datatype": output_datatype(y)}
    body = {"model_name": model, "model_version": version, "id": request_id, "outputs": [out]}
    if binary:
        raw = _raw(y)
        out["parameters"] = {"binary_data_size": len(raw)}
        header = orjson.dumps(body)
        return header + raw, len(header)
    out["data"] = y.ravel() if y.dtype.kind in "fiub" else y.ravel().tolist()
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), None


def v1_response(y: npt.NDArray[Any]) -> bytes:
    if y.dtype == object:
        return orjson.dumps({"predictions": y.tolist()})
    return orjson.dumps({"predictions": y}, option=orjson.OPT_SERIALIZE_NUMPY)
