"""Micro-batching: requests of one event-loop turn share a model call; one failure stays its own."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

from modeldeploy_server.batching import MicroBatcher


def test_concurrent_submissions_share_calls_and_failures_are_isolated() -> None:
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if (x == 13).any():
            raise ValueError("unlucky row")
        return x[:, 0] * 2

    async def scenario() -> list[Any]:
        batcher = MicroBatcher(predict, max_rows=3)
        jobs = [batcher.submit(np.array([[float(v)]])) for v in (1, 2, 13, 4, 5)]
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(scenario())
    assert [r.tolist() if isinstance(r, np.ndarray) else type(r) for r in results] == [
        [2.0], [4.0], ValueError, [8.0], [10.0]]  # fmt: skip
    # [1, 2, 13] as one call (fails), then each alone; [4, 5] as one call
    assert calls == [3, 1, 1, 1, 2]


def test_a_lone_request_is_predicted_at_once() -> None:
    async def scenario() -> np.ndarray:
        return await MicroBatcher(lambda x: x.sum(axis=1), max_rows=64).submit(np.ones((2, 3)))

    assert asyncio.run(scenario()).tolist() == [3.0, 3.0]


@pytest.mark.parametrize("max_rows", [1])
def test_max_rows_one_predicts_every_request_alone(max_rows: int) -> None:
    sizes: list[int] = []

    async def scenario() -> None:
        batcher = MicroBatcher(lambda x: sizes.append(len(x)) or x[:, 0], max_rows=max_rows)
        await asyncio.gather(*(batcher.submit(np.ones((1, 1))) for _ in range(4)))

    asyncio.run(scenario())
    assert sizes == [1, 1, 1, 1]


@pytest.mark.parametrize("seconds", [0.0, 0.02])
def test_a_model_answering_none_gets_an_answer_not_a_hang(seconds: float) -> None:
    """On the event loop (a fast model) and in the model thread (a slow one): the service turns the
    model's None into a 500; the batcher must hand it over, not leave the request waiting forever."""

    def predict(x: np.ndarray) -> None:
        time.sleep(seconds)

    async def scenario() -> list[Any]:
        batcher = MicroBatcher(predict, max_rows=64)  # type: ignore[arg-type]
        first = await asyncio.wait_for(batcher.submit(np.ones((1, 2))), 5)  # not yet timed: the model thread
        second = await asyncio.wait_for(batcher.submit(np.ones((1, 2))), 5)  # timed: the loop if fast
        return [first, second]

    assert asyncio.run(scenario()) == [None, None]
