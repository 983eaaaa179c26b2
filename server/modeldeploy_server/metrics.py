"""Prometheus metrics: the names and labels are a contract with the operator's PromQL.

Owned here: the five `modeldeploy_*` metric families, their constant labels (`model`, `version`,
`revision`), recording (one call per request, from `app`), and rendering `/metrics`. Requests and
their latency carry the `outcome` (see `errors.OUTCOMES`): the operator's error rate and p99 use
only the requests the model answered (`success`, `error`), so rejections, 503s and clients that
went away can neither dilute nor manufacture a canary's errors or latency. With
several workers `PROMETHEUS_MULTIPROC_DIR` is set (by `__main__`, before prometheus_client is
imported) and every worker writes to its own files; rendering merges them (no loss, no double
count). Called by `app`.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modeldeploy_server import binning
from modeldeploy_server.contract import REASONS
from modeldeploy_server.errors import OUTCOMES, outcome_of

REQUESTS = "modeldeploy_requests_total"
DURATION = "modeldeploy_request_duration_seconds"
REJECTIONS = "modeldeploy_rejections_total"
PREDICTIONS = "modeldeploy_predictions_total"
INFO = "modeldeploy_model_info"
PREDICTION_CLASS = "modeldeploy_prediction_class_total"
PREDICTION_BIN = "modeldeploy_prediction_bin_total"
INPUT_BIN = "modeldeploy_input_bin_total"
INPUT_REFERENCE = "modeldeploy_input_reference_proportion"
NONFINITE = "modeldeploy_nonfinite_outputs_total"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BASE_LABELS = ("model", "version", "revision")
CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# Request series created at 0 when the server starts (see Metrics.__init__).
PRECREATED_CODES = tuple(sorted(OUTCOMES))
# Distribution counts reach their counters at most this long after the request (or at /metrics).
FLUSH_SECONDS = 0.25


class Metrics:
    """The server's metric families with the model's label values bound once."""

    def __init__(self, model: str, version: str, revision: str) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series are noise for rate() and absent in multiprocess mode
        self.base = (model, version, revision)
        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode values live in files; the registry is only used to render.
        self.registry = CollectorRegistry()
        reg = None if self.multiprocess else self.registry
        labels = BASE_LABELS
        self._requests = Counter(
            REQUESTS.removesuffix("_total"), "Inference requests (infer/predict) by HTTP status code and outcome.",
            (*labels, "code", "outcome"), registry=reg,
        )  # fmt: skip
        self._duration = Histogram(
            DURATION, "Time to answer an inference request, from its start to its response built, by outcome.",
            (*labels, "outcome"), buckets=BUCKETS, registry=reg,
        )  # fmt: skip
        self._rejections = Counter(
            REJECTIONS.removesuffix("_total"), "Requests refused by the input contract, by reason.",
            (*labels, "reason"), registry=reg,
        )  # fmt: skip
        self._predictions = Counter(PREDICTIONS.removesuffix("_total"), "Rows predicted.", labels, registry=reg)
        self._info = Gauge(
            INFO, "The served model artifact (always 1).", (*labels, "sha256", "format", "sklearn_version"),
            registry=reg, multiprocess_mode="max",
        )  # fmt: skip
        self._classes = Counter(
            PREDICTION_CLASS.removesuffix("_total"), "Rows predicted, by predicted class (classifiers).",
            (*labels, "class"), registry=reg,
        )  # fmt: skip
        self._bins = Counter(
            PREDICTION_BIN.removesuffix("_total"),
            "Rows predicted, by bin of the binary probability score or regression value ('0' lowest).",
            (*labels, "bin"), registry=reg,
        )  # fmt: skip
        self._inputs = Counter(
            INPUT_BIN.removesuffix("_total"), "Rows predicted, by bin of each binned input feature ('0' lowest).",
            (*labels, "feature", "bin"), registry=reg,
        )  # fmt: skip
        self._reference = Gauge(
            INPUT_REFERENCE, "The reference profile's training share of each input bin (with a profile only).",
            (*labels, "feature", "bin"), registry=reg, multiprocess_mode="max",
        )  # fmt: skip
        self._nonfinite = Counter(
            NONFINITE.removesuffix("_total"), "Rows the model answered with NaN or inf (refused with a 500).",
            labels, registry=reg,
        )  # fmt: skip
        self._nonfinite_child = self._nonfinite.labels(*self.base)
        self._tally: binning.Tally | None = None
        self._children: list[Counter] = []
        self._flush_at = 0.0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._duration_children = {outcome: self._duration.labels(*self.base, outcome) for outcome in OUTCOMES.values()}
        self._predictions_child = self._predictions.labels(*self.base)
        self._request_children: dict[int, Counter] = {}
        # Export every status an infer request commonly ends in at 0 from the start: the operator's
        # `increase(...{code=~"5.."}[W])` cannot count the errors that would otherwise create a series
        # (Prometheus has no earlier sample to subtract from), so a canary's first 5xx would go unseen.
        for code in PRECREATED_CODES:
            self._request_child(code)
        for reason in REASONS:
            self._rejections.labels(*self.base, reason)

    def _request_child(self, code: int) -> Counter:
        child = self._request_children.get(code)
        if child is None:
            child = self._requests.labels(*self.base, str(code), outcome_of(code))
            self._request_children[code] = child
        return child

    def set_info(self, sha256: str, fmt: str, sklearn_version: str) -> None:
        self._info.labels(*self.base, sha256, fmt, sklearn_version).set(1)

    def set_layout(self, layout: binning.Layout, reference: dict[str, tuple[float, ...]] | None = None) -> None:
        """Create every distribution series of the loaded model at 0 (a first count must be seen by
        `increase()`), and export the reference profile's training shares when there is one. Called
        again when the serving path changes after loading: the rows counted so far are exported
        first (replacing the tally used to drop them)."""
        self.flush()
        tally = binning.Tally(layout)
        families = {"input": self._inputs, "class": self._classes, "bin": self._bins}
        self._children = [families[family].labels(*self.base, *values) for family, values in tally.slots]
        for _, name, _ in layout.features:
            for b, share in enumerate((reference or {}).get(name, ())):
                self._reference.labels(*self.base, name, str(b)).set(share)
        self._tally, self._flush_at = tally, 0.0

    def predicted(self, x: npt.NDArray[np.float64], y: npt.NDArray[Any]) -> None:
        """Count one answered request's rows by input bin, predicted class and prediction bin: into
        plain integers, moved into the counters at most every `FLUSH_SECONDS`, before rendering, and
        by a timer on this worker's event loop when counts are left (a scrape renders one worker's
        counts only: without the timer, an idle worker's last rows stayed unexported until its next
        request)."""
        tally = self._tally
        if tally is None:
            return
        tally.add(x, y)
        now = time.monotonic()
        if now >= self._flush_at:
            self._flush_at = now + FLUSH_SECONDS
            self.flush()
        elif self._flush_timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # called outside a server (no loop): rendering flushes
                return
            self._flush_timer = loop.call_later(self._flush_at - now, self._timed_flush)

    def _timed_flush(self) -> None:
        self._flush_timer = None
        self._flush_at = time.monotonic() + FLUSH_SECONDS
        self.flush()

    def flush(self) -> None:
        tally = self._tally
        if tally is None:
            return
        children = self._children
        for slot, n in enumerate(tally.take()):
            if n:
                children[slot].inc(n)

    def nonfinite(self, rows: int) -> None:
        self._nonfinite_child.inc(rows)

    def observe(self, code: int, seconds: float, rows: int = 0) -> None:
        self._request_child(code).inc()
        outcome = outcome_of(code)
        child = self._duration_children.get(outcome)
        if child is None:
            child = self._duration_children[outcome] = self._duration.labels(*self.base, outcome)
        child.observe(seconds)
        if rows:
            self._predictions_child.inc(rows)

    def reject(self, reason: str) -> None:
        self._rejections.labels(*self.base, reason).inc()

    def render(self) -> bytes:
        self.flush()  # this process' counts; other workers' within FLUSH_SECONDS (their timer)
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
