"""Wire formats: Open Inference Protocol v2 and the v1 `instances` form, parsed into a matrix.

Owned here: JSON decoding (orjson; the standard library as a fallback so that a Python client's
`NaN`/`Infinity` tokens are refused as 422 `nan`/`infinite` instead of 400), the shape, datatype
and naming rules of a V2 request, and the response bodies. Transport-free: called by `service`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from modeldeploy_server.contract import NUMBER_TYPES, Contract, Matrix, Violation, refuse
from modeldeploy_server.errors import MalformedRequest

NUMERIC_DATATYPES = frozenset(
    ("FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
)


def decode(body: bytes) -> Any:
    """Parse JSON; 400 with the parser's reason when it is not JSON at all."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first_error = str(exc)
    try:
        return json.loads(body)
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise MalformedRequest(f"malformed JSON: {first_error}") from None


def _invalid(detail: str) -> Exception:
    return refuse([Violation(0, None, "invalid_body", detail)])


def parse_v1(contract: Contract, payload: Any) -> Matrix:
    """`{"instances": [[...], ...]}` or `{"instances": [{"name": value, ...}, ...]}`."""
    if type(payload) is not dict or "instances" not in payload:
        raise _invalid('expected a JSON object with "instances": a list of rows')
    rows = payload["instances"]
    if type(rows) is not list:
        raise _invalid('"instances" must be a list of rows')
    if not rows:
        raise refuse([Violation(0, None, "empty", '"instances" is empty: no rows to predict')])
    return contract.from_objects(rows) if type(rows[0]) is dict else contract.parse_checked(rows)


def _flatten(data: Any) -> list[Any]:
    if type(data) is not list:
        raise _invalid("tensor data must be a list")
    while data and all(type(item) is list for item in data):
        data = [value for item in data for value in item]
    flat: list[Any] = data
    return flat


def _tensor(contract: Contract, spec: Any, position: int) -> tuple[str, list[int], str, list[Any]]:
    if type(spec) is not dict:
        raise _invalid(f"inputs[{position}] must be an object with name, shape, datatype, data")
    name, shape, datatype, data = (spec.get(k) for k in ("name", "shape", "datatype", "data"))
    if type(name) is not str or type(shape) is not list or type(datatype) is not str or data is None:
        raise _invalid(f"inputs[{position}] needs name (string), shape (list), datatype (string) and data")
    if not all(type(d) is int and d >= 0 for d in shape):
        raise refuse(
            [Violation(0, None, "shape_mismatch", f"input {name[:64]!r}: shape {shape} is not a list of sizes")]
        )
    if datatype not in NUMERIC_DATATYPES:
        detail = f"input {name[:64]!r}: datatype {datatype[:16]!r} is not numeric (FP32, FP64, INT64, ...)"
        raise refuse([Violation(0, None, "datatype_mismatch", detail)])
    flat = _flatten(data)
    if len(flat) != math.prod(shape):
        detail = f"input {name[:64]!r}: shape {shape} holds {math.prod(shape)} values but data has {len(flat)}"
        raise refuse([Violation(0, None, "shape_mismatch", detail)])
    return name, shape, datatype, flat


def _check_integers(x: Matrix, datatypes: list[str], names: list[str]) -> None:
    for column, (datatype, name) in enumerate(zip(datatypes, names, strict=True)):
        if datatype.startswith(("INT", "UINT")):
            col = x[:, column] if len(datatypes) > 1 else x
            with np.errstate(invalid="ignore"):
                bad = np.isfinite(col) & (col != np.floor(col))
            if bad.any():
                row = int(np.nonzero(bad.reshape(len(col), -1).any(axis=1))[0][0])
                detail = f"input {name!r} declared {datatype} but holds a non-integer value"
                raise refuse([Violation(row, None, "datatype_mismatch", detail)])


def parse_v2(contract: Contract, payload: Any) -> Matrix:
    """One `[N, F]` tensor, or one `[N]`/`[N, 1]` tensor per declared feature (named after it)."""
    if type(payload) is not dict or type(payload.get("inputs")) is not list:
        raise _invalid('expected a JSON object with "inputs": a list of tensors')
    specs = payload["inputs"]
    if not specs:
        raise refuse([Violation(0, None, "empty", '"inputs" is empty')])
    tensors = [_tensor(contract, spec, k) for k, spec in enumerate(specs)]
    width = contract.width
    if len(tensors) == 1 and tensors[0][0] not in contract.index or (width == 1 and len(tensors[0][1]) == 2):
        name, shape, datatype, flat = tensors[0]
        if len(shape) != 2 or shape[1] != width:
            detail = f"input {name[:64]!r}: shape {shape}, expected [N, {width}] ({', '.join(contract.names)})"
            raise refuse([Violation(0, None, "shape_mismatch", detail)])
        if shape[0] == 0:
            raise refuse([Violation(0, None, "empty", f"input {name[:64]!r} has no rows")])
        x = _fast_matrix(contract, flat, shape[0])
        if x is None:  # not all plain numbers: the row-wise path names the first bad cell
            x = contract.parse_checked([flat[i * width : (i + 1) * width] for i in range(shape[0])])
        _check_integers(x, [datatype], [name])
        return x
    return _per_feature(contract, tensors)


def _fast_matrix(contract: Contract, flat: list[Any], n_rows: int) -> Matrix | None:
    """A large flat tensor of plain numbers straight into numpy (no per-row lists), then checked."""
    if n_rows <= 8 or not set(map(type, flat)) <= NUMBER_TYPES:
        return None
    try:
        x = np.array(flat, dtype=np.float64).reshape(n_rows, contract.width)
    except OverflowError:
        return None
    contract.check(x)
    return x


def _per_feature(contract: Contract, tensors: list[tuple[str, list[int], str, list[Any]]]) -> Matrix:
    by_name = {}
    for name, shape, datatype, flat in tensors:
        if name not in contract.index:
            detail = f"unknown input; declared: {', '.join(contract.names)}"
            raise refuse([Violation(0, name[:128], "unknown_feature", detail)])
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise refuse([Violation(0, name, "shape_mismatch", f"shape {shape}, expected [N] or [N, 1]")])
        by_name[name] = (shape[0], datatype, flat)
    for spec in contract.specs:
        if spec.name not in by_name and spec.required:
            raise refuse([Violation(0, spec.name, "missing_feature", "required input tensor is missing")])
    rows = {n for n, _, _ in by_name.values()}
    if len(rows) != 1:
        raise refuse([Violation(0, None, "shape_mismatch", f"input tensors have different row counts {sorted(rows)}")])
    n_rows = rows.pop()
    if n_rows == 0:
        raise refuse([Violation(0, None, "empty", "input tensors have no rows")])
    columns = [by_name[name][2] if name in by_name else [None] * n_rows for name in contract.names]
    x = contract.parse_checked([list(row) for row in zip(*columns, strict=True)])
    datatypes = [by_name[name][1] if name in by_name else "FP64" for name in contract.names]
    _check_integers(x, datatypes, list(contract.names))
    return x


def output_datatype(y: npt.NDArray[Any]) -> str:
    kind = y.dtype.kind
    if kind == "f":
        return "FP64" if y.dtype.itemsize == 8 else "FP32"
    if kind in "iu":
        return "INT64"
    if kind == "b":
        return "BOOL"
    return "BYTES"


def _jsonable(y: npt.NDArray[Any]) -> Any:
    if y.dtype.kind in "fiub":
        return y
    return [str(v) for v in y.ravel()]


def v2_response(model: str, version: str, request_id: str, output: str, y: npt.NDArray[Any]) -> bytes:
    out = {"name": output, "shape": list(y.shape), "datatype": output_datatype(y), "data": _jsonable(y.ravel())}
    body = {"model_name": model, "model_version": version, "id": request_id, "outputs": [out]}
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def v1_response(y: npt.NDArray[Any]) -> bytes:
    data = y if y.dtype.kind in "fiub" else np.array([str(v) for v in y.ravel()], dtype=object).reshape(y.shape)
    if data.dtype == object:
        return orjson.dumps({"predictions": data.tolist()})
    return orjson.dumps({"predictions": data}, option=orjson.OPT_SERIALIZE_NUMPY)
