"""The transport-free data plane: readiness, model metadata, infer/predict.

Owned here: the request flow shared by both protocols (model and version check -> readiness ->
decode -> contract -> micro-batched prediction -> output check -> response body), the declared
output (datatype and shape, taken from the artifact's own method at load, so metadata and every
answer agree whichever serving path runs), and refusing non-finite model outputs as a model
failure. Knows nothing about HTTP beyond the status codes carried by the errors; `app` reads
bodies and records the metrics. Called by `app`; tests call it directly too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
import sklearn

from modeldeploy_server import protocol
from modeldeploy_server.batching import MicroBatcher
from modeldeploy_server.contract import Matrix
from modeldeploy_server.errors import MalformedRequest, ModelFailure, NonFiniteOutput, NotFound, NotReady
from modeldeploy_server.runtime import Runtime
from modeldeploy_server.settings import Settings

SERVER_NAME = "modeldeploy"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]


@dataclass
class Answer:
    """A response body; `rows` predicted (for the metrics); `json_length` set for binary answers."""

    body: bytes
    rows: int = 0
    json_length: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    x: Matrix | None = None  # the rows predicted (the distribution metrics count them)
    y: npt.NDArray[Any] | None = None  # the prediction itself (metrics; a shadow step mirrors it to the canary)


@dataclass(frozen=True)
class Output:
    """What the model answers: its dtype (the artifact's own) and the shape of one row's answer."""

    dtype: np.dtype[Any]
    row_shape: tuple[int, ...]

    @classmethod
    def of(cls, runtime: Runtime) -> Output:
        y = protocol.canonical(np.asarray(runtime.reference(runtime.contract.reference_row())))
        return cls(y.dtype, tuple(y.shape[1:]))


class DataPlane:
    """One model's inference service: what both protocols' routes call."""

    def __init__(self, settings: Settings, on_loaded: Callable[[Runtime], None] | None = None) -> None:
        self.settings = settings
        self.on_loaded = on_loaded  # told of every runtime set (the app exports its model_info metric)
        self.runtime: Runtime | None = None
        self.batcher: MicroBatcher | None = None
        self.output: Output | None = None
        self.draining = False
        self._metadata = b""

    @property
    def ready(self) -> bool:
        return self.runtime is not None and not self.draining

    def set_runtime(self, runtime: Runtime, output: Output | None = None) -> None:
        """Serve `runtime`. Working out `output` (`Output.of`) calls the artifact's own method once: the
        loader does that in a thread and passes it, so that the event loop never waits for the model."""
        self.batcher = MicroBatcher(runtime.predict, self.settings.max_batch_rows)
        self.output = output or Output.of(runtime)
        self._metadata = orjson.dumps(self._metadata_body(runtime, self.output))
        self.runtime = runtime
        if self.on_loaded is not None:
            self.on_loaded(runtime)

    def _metadata_body(self, runtime: Runtime, output: Output) -> dict[str, Any]:
        s = self.settings
        datatype = protocol.output_datatype(np.empty(0, dtype=output.dtype))
        return {
            "name": s.model_name,
            "versions": [s.model_version],
            "platform": f"sklearn-{runtime.format}",
            "inputs": [{"name": name, "datatype": "FP64", "shape": [-1, 1]} for name in runtime.contract.names],
            "outputs": [{"name": runtime.method, "datatype": datatype, "shape": [-1, *output.row_shape]}],
            "parameters": {
                "contract": [spec.model_dump(by_alias=True) for spec in runtime.contract.specs],
                "sha256": runtime.sha256, "format": runtime.format, "revision": s.model_revision,
                "method": runtime.method, "sklearn_version": sklearn.__version__, "serving_path": runtime.path,
                "compiled": runtime.compiled,
                "tensor_input": {"shape": [-1, runtime.contract.width], "datatype": "FP64"},
            },
        }  # fmt: skip

    def server_metadata(self) -> bytes:
        return orjson.dumps({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})

    def check_model(self, name: str, version: str | None = None) -> None:
        if name != self.settings.model_name:
            raise NotFound(f"unknown model {name[:128]!r}; this server serves {self.settings.model_name!r}")
        if version is not None and version != self.settings.model_version:
            versions = [self.settings.model_version]
            raise NotFound(f"model {name!r} has no version {version[:64]!r}; versions: {versions}")

    def model_metadata(self, name: str, version: str | None = None) -> bytes:
        self.check_model(name, version)
        if self.runtime is None:
            raise NotReady(f"model {name!r} is not loaded yet")
        return self._metadata

    def model_ready(self, name: str, version: str | None = None) -> bool:
        self.check_model(name, version)
        return self.ready

    def _loaded(self, name: str) -> tuple[Runtime, MicroBatcher, Output]:
        runtime, batcher, output = self.runtime, self.batcher, self.output
        if runtime is None or batcher is None or output is None or self.draining:
            raise NotReady(f"model {name!r} is not ready")
        return runtime, batcher, output

    async def _predict(self, batcher: MicroBatcher, output: Output, x: Matrix) -> npt.NDArray[Any]:
        try:
            y = await batcher.submit(x)
        except Exception as exc:  # the model raised on contract-valid input: a model failure
            raise ModelFailure(f"model failed on {len(x)} row(s): {type(exc).__name__}: {exc}") from exc
        y = np.ascontiguousarray(protocol.canonical(np.asarray(y)))  # a fast path may answer a strided view
        if y.dtype != output.dtype and y.dtype.kind == output.dtype.kind == "f":
            y = y.astype(output.dtype)  # a compiled path answers in the artifact's own datatype
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            bad = np.nonzero(~np.isfinite(y.reshape(len(y), -1)).all(axis=1))[0]
            raise NonFiniteOutput(f"model answered a non-finite value (NaN or inf) for row {int(bad[0])} of {len(x)}",
                                  len(bad))  # fmt: skip
        return y

    def _v2_request(self, runtime: Runtime, body: bytes, json_length: int | None) -> protocol.V2Request:
        binary = None
        if json_length is not None:
            if not 0 <= json_length <= len(body):
                raise MalformedRequest(f"Inference-Header-Content-Length {json_length} exceeds the body's "
                                       f"{len(body)} bytes")  # fmt: skip
            body, binary = body[:json_length], body[json_length:]
        payload = protocol.decode(body)
        return protocol.parse_v2(runtime.contract, payload, self.settings.max_request_rows, runtime.method, binary)

    async def infer_v2(self, name: str, body: bytes, json_length: int | None, request_id: str) -> Answer:
        """Answer one V2 `infer` request (JSON, or the binary tensor extension when `json_length` is set)."""
        runtime, batcher, output = self._loaded(name)
        request = self._v2_request(runtime, body, json_length)
        y = await self._predict(batcher, output, request.x)
        response_id = request_id if request.request_id is None else request.request_id
        data, header_length = protocol.v2_response(name, self.settings.model_version, response_id, runtime.method,
                                                   y, request.binary_output)  # fmt: skip
        return Answer(data, len(request.x), header_length, x=request.x, y=y)

    async def predict_v1(self, name: str, body: bytes) -> Answer:
        """Answer one V1 `:predict` request."""
        runtime, batcher, output = self._loaded(name)
        x = protocol.parse_v1(runtime.contract, protocol.decode(body), self.settings.max_request_rows)
        y = await self._predict(batcher, output, x)
        return Answer(protocol.v1_response(y), len(x), x=x, y=y)

    async def mirrored(self, v1: bool, body: bytes, json_length: int | None) -> tuple[Matrix, npt.NDArray[Any]]:
        """A request stable answered, answered here too (the same parsing, contract and model): (rows, answer)."""
        runtime, batcher, output = self._loaded(self.settings.model_name)
        if v1:
            x = protocol.parse_v1(runtime.contract, protocol.decode(body), self.settings.max_request_rows)
        else:
            x = self._v2_request(runtime, body, json_length).x
        return x, await self._predict(batcher, output, x)
