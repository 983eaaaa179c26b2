"""Adaptive micro-batching of concurrent requests, with no added waiting time.

Owned here: the queue of validated matrices waiting for the model. The first request of an event
loop turn schedules a flush with `call_soon`, which runs after every request already parsed in
that turn; so requests that arrive together are predicted as one matrix (one model call instead
of many), and a lone request is predicted at once. If a combined call fails, each request is
retried alone so that one request's failure is not another's. A slow model's calls run in one
model thread, so the event loop keeps answering probes while they run. Called by `service`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from modeldeploy_server.contract import Matrix

Predict = Callable[[Matrix], npt.NDArray[Any]]
Item = tuple[Matrix, "asyncio.Future[npt.NDArray[Any]]"]


INLINE_SECONDS = 0.005  # a flush expected to take at most this long runs on the event loop, a longer one off it
Result = tuple["asyncio.Future[npt.NDArray[Any]]", "npt.NDArray[Any] | None", "Exception | None"]
Done: TypeAlias = "asyncio.Future[tuple[list[Result], float | None]]"  # a threaded flush: answers, seconds per row
_worker: ThreadPoolExecutor | None = None


def _model_thread() -> ThreadPoolExecutor:
    """The one thread that runs slow model calls, shared by every batcher of the process (one call at a time)."""
    global _worker
    if _worker is None:
        _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    return _worker


def _slower(seconds_per_row: float | None, seconds: float, rows: int) -> float:
    return max(seconds_per_row or 0.0, seconds / max(1, rows))


class MicroBatcher:
    """Groups the matrices waiting for the model into calls of at most `max_rows` rows.

    A flush runs on the event loop when its rows times the model's last measured seconds per row is
    at most INLINE_SECONDS (a thread hop would cost more than the call); otherwise in the model
    thread, so that probes, metrics and request parsing are answered while it runs (a readiness
    probe that waits behind a 5 s call times out and takes a busy, healthy pod out of its Service).
    Until a call has been timed, flushes run in the thread. Requests that arrive during a threaded
    flush wait for it and are flushed together after it. The limit: a model fast so far whose next
    call is unexpectedly long (one slow input) still runs that call on the loop.
    """

    def __init__(self, predict: Predict, max_rows: int) -> None:
        self.predict = predict
        self.max_rows = max_rows
        self._queue: list[Item] = []
        self._scheduled = False
        self._busy = False  # a call runs in the model thread
        self._seconds_per_row = float("inf")  # of the last flush's slowest call (none timed yet: unknown)
        self.batched_requests = 0

    async def submit(self, x: Matrix) -> npt.NDArray[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[npt.NDArray[Any]] = loop.create_future()
        self._queue.append((x, future))
        if not self._scheduled and not self._busy:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        if not queue:
            return
        batches: list[list[Item]] = []
        start = 0
        while start < len(queue):
            end, rows = start + 1, len(queue[start][0])
            while end < len(queue) and rows + len(queue[end][0]) <= self.max_rows:
                rows += len(queue[end][0])
                end += 1
            batches.append(queue[start:end])
            start = end
        self.batched_requests += len(queue)
        if sum(len(x) for x, _ in queue) * self._seconds_per_row <= INLINE_SECONDS:
            self._deliver(*self._compute(batches))
            return
        self._busy = True
        done = asyncio.get_running_loop().run_in_executor(_model_thread(), self._compute, batches)
        done.add_done_callback(functools.partial(self._threaded_done, batches))

    def _threaded_done(self, batches: list[list[Item]], done: Done) -> None:
        self._busy = False
        try:
            self._deliver(*done.result())
        except BaseException as exc:  # _compute catches the model's exceptions; anything else fails the requests
            self._deliver([(future, None, exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                           for batch in batches for _, future in batch], None)  # fmt: skip
        if self._queue:
            self._flush()

    def _compute(self, batches: list[list[Item]]) -> tuple[list[Result], float | None]:
        """Every batch's answers (a failed combined call is retried request by request) and the slowest
        call's seconds per row. Calls only the model: safe in the model thread; `_deliver` sets the futures."""
        results: list[Result] = []
        per_row: float | None = None
        for batch in batches:
            if len(batch) > 1:
                started = time.perf_counter()
                try:
                    y = self.predict(np.vstack([x for x, _ in batch]))
                except Exception:  # isolate the failing request: retry each alone
                    pass
                else:
                    per_row = _slower(per_row, time.perf_counter() - started, len(y))
                    offset = 0
                    for x, future in batch:
                        results.append((future, y[offset : offset + len(x)], None))
                        offset += len(x)
                    continue
            for x, future in batch:
                started = time.perf_counter()
                try:
                    results.append((future, self.predict(x), None))
                except Exception as exc:  # reported to the request as a model failure (500)
                    results.append((future, None, exc))
                per_row = _slower(per_row, time.perf_counter() - started, len(x))
        return results, per_row

    def _deliver(self, results: list[Result], seconds_per_row: float | None) -> None:
        if seconds_per_row is not None:
            self._seconds_per_row = seconds_per_row
        for future, y, exc in results:
            if future.done():  # the request was cancelled (its client went away)
                continue
            if exc is not None:
                future.set_exception(exc)
            else:  # whatever the model answered, even None: the service judges it (a 500), it never hangs
                future.set_result(cast("npt.NDArray[Any]", y))
