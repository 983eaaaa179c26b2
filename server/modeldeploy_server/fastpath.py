"""Faster serving paths, each used only when it reproduces the artifact's own predictions at load.

Owned here: ONNX artifacts (onnxruntime, one intra-op thread), and for sklearn artifacts the
choice among (a) exact bypasses of sklearn's per-call overhead (a forest's trees called in
order, a linear model's decision function), which must be bit-identical to the artifact's method
on the verification rows, and (b) an ONNX compilation (skl2onnx), whose classes must be identical
and whose floating outputs must be within `RTOL`/`ATOL`, tried only when no exact path is already
fast (`EXACT_IS_FAST_ENOUGH_SECONDS`). The fastest verified path wins; if none verifies, the
artifact's own method serves. Called by `runtime.load_runtime`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from modeldeploy_server.contract import Contract, Matrix
from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.settings import InputSpec, Settings
from modeldeploy_server.verify import reference_rows

if TYPE_CHECKING:
    from modeldeploy_server.runtime import Predict, Runtime

log = logging.getLogger("modeldeploy_server.fastpath")
RTOL = 1e-5  # relative tolerance on probabilities / regression values of the compiled (ONNX) path
ATOL = 1e-6  # absolute tolerance, same
EXACT_IS_FAST_ENOUGH_SECONDS = 50e-6  # per single-row call: then the compiled path is not tried


def _session(model: bytes | str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _onnx_predict(session: Any, method: str) -> Callable[[Matrix], npt.NDArray[Any]]:
    inp = session.get_inputs()[0]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    outputs = session.get_outputs()
    if method == "predict_proba":
        names = [o.name for o in outputs]
        out = "probabilities" if "probabilities" in names else names[min(1, len(names) - 1)]
    else:
        out = outputs[0].name
    name = inp.name

    def predict(x: Matrix) -> npt.NDArray[Any]:
        y = session.run([out], {name: x.astype(dtype, copy=False)})[0]
        if isinstance(y, list):  # a ZipMap output: a list of {class: probability}
            return np.array([list(row.values()) for row in y], dtype=np.float64)
        y = np.asarray(y)
        return y.ravel() if y.ndim == 2 and y.shape[1] == 1 and method == "predict" else y

    return predict


def onnx_runtime(path: Path, settings: Settings, digest: str) -> Runtime:
    """An ONNX artifact: onnxruntime is both the reference and the serving path."""
    from modeldeploy_server.runtime import Runtime

    try:
        session = _session(str(path))
    except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
        raise LoadRefused(f"cannot load onnx artifact {settings.model_uri}: {type(exc).__name__}: {exc}") from exc
    shape = session.get_inputs()[0].shape
    width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
    specs = list(settings.inputs) or [InputSpec(name=f"x{j}") for j in range(width or 0)]
    if not specs:
        raise LoadRefused(f"MODELDEPLOY_INPUTS is empty and {settings.model_uri} does not fix its input width")
    if width is not None and width != len(specs):
        raise LoadRefused(f"MODELDEPLOY_INPUTS declares {len(specs)} features but the ONNX model expects {width}")
    predict = _onnx_predict(session, settings.model_method)
    return Runtime(Contract(specs), predict, predict, digest, "onnx", settings.model_method, path="onnx")


def _same(reference: npt.NDArray[Any], candidate: npt.NDArray[Any], *, exact: bool) -> bool:
    if reference.shape != candidate.shape:
        return False
    if exact or reference.dtype.kind not in "fc":
        return bool(np.array_equal(reference, candidate))
    return bool(np.allclose(candidate, reference, rtol=RTOL, atol=ATOL))


def _timed(predict: Predict, row: Matrix) -> float:
    best = float("inf")
    for _ in range(20):
        started = time.perf_counter()
        predict(row)
        best = min(best, time.perf_counter() - started)
    return best


def choose(runtime: Runtime, model: Any) -> None:
    """Replace `runtime.predict` with the fastest candidate that verifies against the reference."""
    from modeldeploy_server.candidates import candidates

    rows = reference_rows(model, runtime.contract)
    expected = runtime.reference(rows)
    singles = [runtime.reference(rows[i : i + 1]) for i in range(min(len(rows), 32))]
    best, best_time = runtime.reference, _timed(runtime.reference, rows[:1])
    best_name = "sklearn"
    for name, exact, build in candidates(model, runtime.method):
        if not exact and best_time < EXACT_IS_FAST_ENOUGH_SECONDS:
            # bit-identical and already fast: not worth the compiler's start-up time (~1 s) or a tolerance
            runtime.notes.append(f"{name}: not tried, {best_name} takes {best_time * 1e6:.0f} us/row")
            continue
        if not exact and runtime.contract.any_optional:
            # optional features let NaN reach the model; the verification rows hold none, so only paths that
            # run sklearn's own arithmetic (exact) are eligible
            runtime.notes.append(f"{name}: skipped, optional features may send NaN")
            continue
        try:
            predict = build()
            ok = _same(expected, predict(rows), exact=exact) and all(
                _same(single, predict(rows[i : i + 1]), exact=exact) for i, single in enumerate(singles)
            )
        except Exception as exc:  # a candidate that cannot be built or run is simply not used
            runtime.notes.append(f"{name}: unavailable ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        if not ok:
            runtime.notes.append(f"{name}: rejected, does not reproduce the reference on {len(rows)} rows")
            continue
        seconds = _timed(predict, rows[:1])
        runtime.notes.append(f"{name}: verified on {len(rows)} rows, {seconds * 1e6:.0f} us/row")
        if seconds < best_time:
            best, best_time, best_name = predict, seconds, name
    runtime.predict, runtime.path = best, best_name
