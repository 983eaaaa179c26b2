"""The ASGI lifespan: loading the model and choosing its serving path, outside the HTTP layer.

Owned here: the `Loader`. The model loads in a background thread after startup so that liveness
answers during a long download; readiness turns true only after load + self-check (on the
artifact's own method); the verified fast path is chosen afterwards, in a thread, and swapped in.
No call of the model runs on the event loop, which answers the probes.
A load refusal is kept in `refused` and reported to `on_refused` (the CLI stops the server and
exits non-zero). Worker processes (`load_before_serving`) load before accepting connections.
Called by `app.App` for `lifespan` messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.runtime import Runtime, load_runtime
from modeldeploy_server.service import DataPlane, Output
from modeldeploy_server.settings import Settings

Message = MutableMapping[str, Any]
log = logging.getLogger("modeldeploy_server.lifecycle")


class Loader:
    """Loads the model into a `DataPlane` during the ASGI lifespan; stops it from serving at shutdown."""

    def __init__(self, settings: Settings, plane: DataPlane, preloaded: Runtime | None = None,
                 load_before_serving: bool = False) -> None:  # fmt: skip
        self.settings = settings
        self.plane = plane
        self.preloaded = preloaded
        self.load_before_serving = load_before_serving
        self.refused: str | None = None
        self.on_refused: Callable[[str], None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def lifespan(self, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:  # fmt: skip
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.preloaded is not None:
                    await self._serve(self.preloaded)
                elif self.load_before_serving:
                    try:
                        await self._serve(await asyncio.to_thread(load_runtime, self.settings, False))
                    except LoadRefused as exc:
                        await send({"type": "lifespan.startup.failed", "message": str(exc)})
                        return
                    self._task = asyncio.get_running_loop().create_task(self._compile())
                else:
                    self._task = asyncio.get_running_loop().create_task(self._load())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.plane.draining = True
                if self._task is not None and not self._task.done():
                    self._task.cancel()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def not_ready_reason(self) -> str:
        if self.plane.draining:
            return "shutting down"
        return self.refused or "model is not loaded yet"

    async def _serve(self, runtime: Runtime) -> None:
        """Hand `runtime` to the data plane, its one call of the model (`Output.of`) made in a thread."""
        self.plane.set_runtime(runtime, await asyncio.to_thread(Output.of, runtime))

    async def _load(self) -> None:
        try:
            runtime = await asyncio.to_thread(load_runtime, self.settings, False)
        except Exception as exc:  # LoadRefused, or anything unforeseen: never ready, exit non-zero
            self.refused = str(exc) if isinstance(exc, LoadRefused) else f"loading failed: {type(exc).__name__}: {exc}"
            log.error(self.refused, extra={"fields": {"event": "load_refused", "uri": self.settings.model_uri}})
            if self.on_refused is not None:
                self.on_refused(self.refused)
            return
        await self._serve(runtime)
        log.info("ready", extra={"fields": {"event": "ready", "serving_path": runtime.path}})
        await self._compile()

    async def _compile(self) -> None:
        """After readiness: verify faster paths in a thread, then switch the serving path in the loop."""
        runtime = self.plane.runtime
        if runtime is None or runtime.compiled:
            return
        try:
            await asyncio.to_thread(runtime.compile, self.settings)
        except Exception:  # the reference path keeps serving; a failed compilation is only logged
            runtime.predict, runtime.path, runtime.compiled = runtime.reference, "sklearn", True
            log.exception("compiling a fast path failed; serving the artifact's own method")
        self.plane.set_runtime(runtime, self.plane.output)  # the same artifact's method: the same output
        fields = {"event": "compiled", "serving_path": runtime.path, "notes": runtime.notes}
        log.info("serving path chosen", extra={"fields": fields})
