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

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from modeldeploy_server.contract import REASONS
from modeldeploy_server.errors import OUTCOMES, outcome_of

REQUESTS = "modeldeploy_requests_total"
DURATION = "modeldeploy_request_duration_seconds"
REJECTIONS = "modeldeploy_rejections_total"
PREDICTIONS = "modeldeploy_predictions_total"
INFO = "modeldeploy_model_info"
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BASE_LABELS = ("model", "version", "revision")
CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# Request series created at 0 when the server starts (see Metrics.__init__).
PRECREATED_CODES = tuple(sorted(OUTCOMES))


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
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
