"""Adaptive micro-batching of concurrent requests, with no added waiting time.

Owned here: the queue of validated matrices waiting for the model. The first request of an event
loop turn schedules a flush with `call_soon`, which runs after every request already parsed in
that turn; so requests that arrive together are predicted as one matrix (one model call instead
of many), and a lone request is predicted at once. If a combined call fails, each request is
retried alone so that one request's failure is not another's. Called by `service`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_server.contract import Matrix

Predict = Callable[[Matrix], npt.NDArray[Any]]
Item = tuple[Matrix, "asyncio.Future[npt.NDArray[Any]]"]


class MicroBatcher:
    def __init__(self, predict: Predict, max_rows: int) -> None:
        self.predict = predict
        self.max_rows = max_rows
        self._queue: list[Item] = []
        self._scheduled = False
        self.batches = 0
        self.batched_requests = 0

    async def submit(self, x: Matrix) -> npt.NDArray[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[npt.NDArray[Any]] = loop.create_future()
        self._queue.append((x, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        start = 0
        while start < len(queue):
            end, rows = start + 1, len(queue[start][0])
            while end < len(queue) and rows + len(queue[end][0]) <= self.max_rows:
                rows += len(queue[end][0])
                end += 1
            self._run(queue[start:end])
            start = end

    def _run(self, batch: list[Item]) -> None:
        self.batches += 1
        self.batched_requests += len(batch)
        if len(batch) == 1:
            self._run_one(*batch[0])
            return
        try:
            y = self.predict(np.vstack([x for x, _ in batch]))
        except Exception:  # isolate the failing request: retry each alone
            for x, future in batch:
                self._run_one(x, future)
            return
        offset = 0
        for x, future in batch:
            if not future.done():
                future.set_result(y[offset : offset + len(x)])
            offset += len(x)

    def _run_one(self, x: Matrix, future: asyncio.Future[npt.NDArray[Any]]) -> None:
        try:
            y = self.predict(x)
        except Exception as exc:  # reported to the request as a model failure (500)
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(y)
