"""The transport-free inference service: readiness, model metadata, infer/predict with metrics.

Owned here: the request flow shared by both protocols (name check -> readiness -> decode ->
contract -> micro-batched prediction -> response body) and the one place where every inference
request is counted and timed, whatever its outcome. Knows nothing about HTTP beyond status codes
carried by the errors. Called by `app`; tests call it directly too.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import sklearn

from modeldeploy_server import protocol
from modeldeploy_server.batching import MicroBatcher
from modeldeploy_server.errors import ContractViolation, ModelFailure, NotFound, NotReady, RequestError
from modeldeploy_server.metrics import Metrics
from modeldeploy_server.runtime import Runtime
from modeldeploy_server.settings import Settings

SERVER_NAME = "modeldeploy"
SERVER_VERSION = "0.1.0"


class Service:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.runtime: Runtime | None = None
        self.batcher: MicroBatcher | None = None
        self.draining = False
        self._metadata = b""

    @property
    def ready(self) -> bool:
        return self.runtime is not None and not self.draining

    def set_runtime(self, runtime: Runtime) -> None:
        self.batcher = MicroBatcher(runtime.predict, self.settings.max_batch_rows)
        self.metrics.set_info(runtime.sha256, runtime.format, sklearn.__version__)
        self._metadata = orjson.dumps(self._metadata_body(runtime))
        self.runtime = runtime

    def _metadata_body(self, runtime: Runtime) -> dict[str, Any]:
        s = self.settings
        return {
            "name": s.model_name,
            "versions": [s.model_version],
            "platform": f"sklearn-{runtime.format}",
            "inputs": [{"name": name, "datatype": "FP64", "shape": [-1, 1]} for name in runtime.contract.names],
            "outputs": [{"name": runtime.method, "datatype": "FP64" if runtime.method != "predict" else "ANY",
                         "shape": [-1]}],
            "parameters": {
                "contract": [spec.model_dump(by_alias=True) for spec in runtime.contract.specs],
                "sha256": runtime.sha256, "format": runtime.format, "revision": s.model_revision,
                "method": runtime.method, "sklearn_version": sklearn.__version__, "serving_path": runtime.path,
                "compiled": runtime.compiled,
                "tensor_input": {"shape": [-1, runtime.contract.width], "datatype": "FP64"},
            },
        }  # fmt: skip

    def server_metadata(self) -> bytes:
        return orjson.dumps({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": []})

    def check_model(self, name: str) -> None:
        if name != self.settings.model_name:
            raise NotFound(f"unknown model {name[:128]!r}; this server serves {self.settings.model_name!r}")

    def model_metadata(self, name: str) -> bytes:
        self.check_model(name)
        if self.runtime is None:
            raise NotReady(f"model {name!r} is not loaded yet")
        return self._metadata

    def model_ready(self, name: str) -> bool:
        self.check_model(name)
        return self.ready

    async def infer(self, protocol_name: str, name: str, read_body: Callable[[], Awaitable[bytes]],
                    request_id: str) -> bytes:  # fmt: skip
        """Answer one v2 `infer` or v1 `predict` request; count and time it whatever happens."""
        started = time.perf_counter()
        rows = 0
        try:
            self.check_model(name)
            body = await read_body()
            runtime, batcher = self.runtime, self.batcher
            if runtime is None or batcher is None or self.draining:
                raise NotReady(f"model {name!r} is not ready")
            payload = protocol.decode(body)
            parse = protocol.parse_v2 if protocol_name == "v2" else protocol.parse_v1
            x = parse(runtime.contract, payload)
            try:
                y = await batcher.submit(x)
            except Exception as exc:  # the model raised on contract-valid input: a model failure
                raise ModelFailure(f"model failed on {len(x)} row(s): {type(exc).__name__}: {exc}") from exc
            rows = len(x)
            if protocol_name == "v2":
                response = protocol.v2_response(name, self.settings.model_version, request_id, runtime.method, y)
            else:
                response = protocol.v1_response(y)
        except ContractViolation as exc:
            self.metrics.reject(exc.reason)
            self.metrics.observe(exc.status, time.perf_counter() - started)
            raise
        except RequestError as exc:
            self.metrics.observe(exc.status, time.perf_counter() - started)
            raise
        except Exception:
            self.metrics.observe(500, time.perf_counter() - started)
            raise
        self.metrics.observe(200, time.perf_counter() - started, rows)
        return response
