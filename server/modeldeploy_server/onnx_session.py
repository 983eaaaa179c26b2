"""ONNX sessions: an onnxruntime session with one intra-op thread, and its `predict` function.

Owned here: how an ONNX graph is opened (CPU provider, one thread per session, so the server's
workers, not onnxruntime's pool, set the parallelism) and how its outputs map to the artifact's
method (`predict` = the first output, `predict_proba` = "probabilities" or the second output;
a ZipMap list of dicts becomes a matrix; floating outputs are served as float64, the datatype the
metadata declares). An artifact is opened from its verified bytes, never from a path, and only if
it is self-contained: a tensor stored as "external data" names a file that onnxruntime would read
from beside the artifact or the working directory, bytes the digest never covered, so such a
graph is refused. Called by `runtime` for ONNX artifacts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_server.contract import Matrix
from modeldeploy_server.errors import LoadRefused


def external_data(model: bytes) -> list[str]:
    """The names of tensors (anywhere in the graph, subgraphs included) stored outside the file."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    proto = onnx.load_model_from_string(model)
    return [t.name for t in _get_all_tensors(proto) if uses_external_data(t)]


def open_artifact(data: bytes, uri: str) -> Any:
    """A session for a verified, self-contained ONNX artifact; LoadRefused otherwise."""
    try:
        outside = external_data(data)
    except Exception as exc:  # not a parseable ONNX model
        raise LoadRefused(f"cannot load onnx artifact {uri}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if outside:
        raise LoadRefused(
            f"onnx artifact {uri} stores tensors {outside[:5]} as external data files, which the digest does not "
            "cover; serve a self-contained graph"
        )
    try:
        return session(data)
    except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
        raise LoadRefused(f"cannot load onnx artifact {uri}: {type(exc).__name__}: {str(exc)[:300]}") from exc


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
