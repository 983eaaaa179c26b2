"""ONNX sessions: an onnxruntime session with one intra-op thread, and its `predict` function.

Owned here: how an ONNX graph is opened (CPU provider, one thread per session, so the server's
workers, not onnxruntime's pool, set the parallelism) and how its outputs map to the artifact's
method (`predict` = the first output, `predict_proba` = "probabilities" or the second output;
a ZipMap list of dicts becomes a matrix; floating outputs are served as float64, the datatype the
metadata declares). Called by `runtime` for ONNX artifacts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_server.contract import Matrix


def session(model: bytes | str) -> Any:
    """An onnxruntime InferenceSession for a serialized graph or a file path."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def predict_fn(sess: Any, method: str) -> Callable[[Matrix], npt.NDArray[Any]]:
    """The session's answer for `method`, as a function of a float64 row matrix."""
    inp = sess.get_inputs()[0]
    dtype = np.float64 if inp.type == "tensor(double)" else np.float32
    outputs = sess.get_outputs()
    if method == "predict_proba":
        names = [o.name for o in outputs]
        out = "probabilities" if "probabilities" in names else names[min(1, len(names) - 1)]
    else:
        out = outputs[0].name
    name = inp.name

    def predict(x: Matrix) -> npt.NDArray[Any]:
        y = sess.run([out], {name: x.astype(dtype, copy=False)})[0]
        if isinstance(y, list):  # a ZipMap output: a list of {class: probability}
            return np.array([list(row.values()) for row in y], dtype=np.float64)
        y = np.asarray(y)
        if y.dtype.kind == "f":
            y = y.astype(np.float64, copy=False)
        return y.ravel() if y.ndim == 2 and y.shape[1] == 1 and method == "predict" else y

    return predict
