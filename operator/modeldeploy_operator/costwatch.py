"""The shell's cost probe: fills `status.cost` about once a minute per ModelDeployment.

`CostWatch` is `handlers.Shell.cost`, called each tick after `core.decide` and before the status
write, so the rollout's decision never depends on it. I/O: one list of the ModelDeployment's Deployments (the
stable revision's requested resources, replicas and workers; the canary's) and a few Prometheus
queries; the arithmetic is in `cost` (pure). A failed query leaves the figures it feeds empty and
says so in `reason`; a failed Deployment read keeps the previous `status.cost`.

The queries are asked for a whole namespace at once (`sum by (model, revision)`, cAdvisor's series
`by (pod)`), and one answer serves every ModelDeployment of that namespace and window whose tick
asks within `SHARED_SECONDS` (`Shared`): at 1,000 objects in a namespace that is a few dozen
queries a minute instead of 7,000, which were a fifth of the operator's CPU (bench/README.md).

The volume: requestsPerDay = increase(modeldeploy_requests_total{namespace, model, revision=stable}[W])
x 86400 / W, where W (`requestsWindow`) is the time since the stable revision started serving
(its Promoted or Deployed history entry), rounded down to one of `WINDOWS` (1, 2, 5, 10, 15 or 30
minutes, 1, 2, 3, 6, 12 hours or a day; one minute while it is not serving yet; a day when its
entry fell out of a full history). A younger revision is measured over its own life only: a
longer window would count the time before it existed as idle; the rounding lets objects share
their queries.

Measured usage over the same window, from the kubelet's cAdvisor series in the same Prometheus
(a user's kube-prometheus scrapes them; `container!=""` drops the pod-level totals, `container!="POD"`
the sandbox): usedCpuCores = sum(rate(container_cpu_usage_seconds_total[W])), usedMemoryGiB =
sum(avg_over_time(container_memory_working_set_bytes[W])), over the containers of the stable
Deployment's pods. cAdvisor's series carry the pod's name, not its labels, so the pods are those
named like the Deployment's ReplicaSets name them (`<deployment>-<hash>-<suffix>`, one segment
each, so a Deployment named `<deployment>-x` does not match). No cAdvisor series: the three
figures stay empty.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from modeldeploy_operator import cost
from modeldeploy_operator.analysis import DURATION_BUCKET_METRIC, REQUESTS_METRIC, QueryResult
from modeldeploy_operator.api import HISTORY_LIMIT, CostStatus, ModelDeploymentSpec, ModelDeploymentStatus
from modeldeploy_operator.children import LABEL_REVISION
from modeldeploy_operator.model import Meta, fmt_time, parse_time, seconds_since
from modeldeploy_operator.prom import Prometheus
from modeldeploy_operator.settings import OperatorSettings

log = logging.getLogger("modeldeploy.operator")

INTERVAL_SECONDS = 60
# status.cost alone is worth a status write only this rarely (MODELDEPLOY_OPERATOR_COST_REFRESH_SECONDS):
# between, it is refreshed when the tick writes status anyway (an analysis, a step), so it adds no
# request (`make bench-operator`)
ALONE_SECONDS = 300
MIN_WINDOW_SECONDS = 60
MAX_WINDOW_SECONDS = cost.SECONDS_PER_DAY
DURATION_SUM = DURATION_BUCKET_METRIC.removesuffix("_bucket") + "_sum"
DURATION_COUNT = DURATION_BUCKET_METRIC.removesuffix("_bucket") + "_count"
PREDICTIONS_METRIC = "modeldeploy_predictions_total"
SERVING_OUTCOMES = ("Promoted", "Deployed")
CPU_USAGE_METRIC = "container_cpu_usage_seconds_total"
MEMORY_USAGE_METRIC = "container_memory_working_set_bytes"
GIB = 2.0**30
# requestsWindow and the canary's window are the revision's life rounded down to one of these
WINDOWS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, MAX_WINDOW_SECONDS)
# one namespace-wide answer serves every tick that asks for it within this long
SHARED_SECONDS = 30.0
# a failed query is not asked again for this long (the ticks waiting on it take its answer)
FAILED_SECONDS = 5.0
BY = ("model", "revision")
_SEGMENT = re.compile("[a-z0-9]+")


def due(status: ModelDeploymentStatus, now: datetime, writing: bool = True, alone: float = ALONE_SECONDS) -> bool:
    """Refresh status.cost: every minute when the tick writes status anyway (`writing`), else every
    `alone` seconds (five minutes by default)."""
    if status.stable_revision is None:
        return False
    last = status.cost.time if status.cost is not None else None
    return last is None or seconds_since(last, now) >= (INTERVAL_SECONDS if writing else max(INTERVAL_SECONDS, alone))


def serving_since(status: ModelDeploymentStatus) -> str | None:
    """When the stable revision started serving: its last Promoted or Deployed history entry."""
    for h in reversed(status.history):
        if h.revision == status.stable_revision and h.outcome in SERVING_OUTCOMES:
            return h.time
    return None


def rounded_window(seconds: float) -> int:
    """The longest of `WINDOWS` within `seconds` (the shortest when none is)."""
    return max((w for w in WINDOWS if w <= seconds), default=WINDOWS[0])


def window_for(status: ModelDeploymentStatus, now: datetime, scrape_interval: float) -> int:
    since = serving_since(status)
    if since is not None:
        age = seconds_since(since, now)
    else:  # not serving yet (first deployment), or its entry fell out of a full history: long ago
        age = MAX_WINDOW_SECONDS if len(status.history) >= HISTORY_LIMIT else 0
    floor = max(MIN_WINDOW_SECONDS, math.ceil(4 * scrape_interval))
    return max(floor, rounded_window(age))


def queries(namespace: str, window: int, scrape_interval: float) -> dict[str, str]:
    """The PromQL behind status.cost for every revision of a namespace over `window` seconds, one
    series per (model, revision); a ratio has no series where its denominator is 0."""
    sel = f'{{namespace="{namespace}"}}'
    w = cost.window_text(window)
    by = "sum by (model, revision)"
    # the peak: the highest 1-minute (at least 4 scrapes) rate, sampled every scrape but at most
    # 1,440 times per window (a day's window: once a minute), to bound Prometheus' work
    rate_window = cost.window_text(max(60, math.ceil(4 * scrape_interval)))
    step = cost.window_text(max(math.ceil(scrape_interval), window // 1440, 1))
    seconds = f"{by} (increase({DURATION_SUM}{sel}[{w}]))"
    return {
        "requests": f"{by} (increase({REQUESTS_METRIC}{sel}[{w}]))",
        "seconds_per_request": f"{seconds} / ({by} (increase({DURATION_COUNT}{sel}[{w}])) > 0)",
        "seconds_per_row": f"{seconds} / ({by} (increase({PREDICTIONS_METRIC}{sel}[{w}])) > 0)",
        "peak_rows_per_second": f"max_over_time({by} (rate({PREDICTIONS_METRIC}{sel}[{rate_window}]))[{w}:{step}])",
    }


def usage_queries(namespace: str, window: int) -> dict[str, str]:
    """The PromQL of the measured CPU (cores) and memory (bytes) of every pod of a namespace over
    `window` seconds, one series per pod (`per_deployment` sums them by Deployment)."""
    sel = f'{{namespace="{namespace}",container!="",container!="POD"}}'
    w = cost.window_text(window)
    return {
        "used_cpu_cores": f"sum by (pod) (rate({CPU_USAGE_METRIC}{sel}[{w}]))",
        "used_memory_bytes": f"sum by (pod) (avg_over_time({MEMORY_USAGE_METRIC}{sel}[{w}]))",
    }


def deployment_of(pod: str) -> str | None:
    """The Deployment a pod belongs to by its name, `<deployment>-<hash>-<suffix>` as ReplicaSets
    name them (one [a-z0-9] segment each, so `<deployment>-x` is not `<deployment>`'s)."""
    name, *tail = pod.rsplit("-", 2)
    return name if len(tail) == 2 and all(_SEGMENT.fullmatch(t) for t in tail) else None


def per_deployment(pods: QueryResult) -> QueryResult:
    """A `by (pod)` answer summed per Deployment (`series` keyed by `(deployment,)`), once per
    answer rather than once per object that reads it."""
    out: dict[tuple[str, ...], float] = {}
    for (pod,), value in (pods.series or {}).items():
        dep = deployment_of(pod)
        if dep is not None:
            out[(dep,)] = out.get((dep,), 0.0) + value
    return QueryResult(series=out)


@dataclass
class _Answer:
    lock: threading.Lock = field(default_factory=threading.Lock)
    at: float = 0.0  # when answered (monotonic), or when first wanted
    result: QueryResult | None = None


class Shared:
    """Namespace-wide answers shared by the ticks that ask within `fresh` seconds (a failed one
    within `failed` seconds). Each query is asked by one tick at a time; the others wait for its
    answer instead of asking again."""

    def __init__(
        self,
        prom: Prometheus,
        fresh: float = SHARED_SECONDS,
        failed: float = FAILED_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prom, self.fresh, self.failed, self.clock = prom, fresh, failed, clock
        self.lock = threading.Lock()
        self.answers: dict[str, _Answer] = {}  # by PromQL
        self.asked = 0  # queries sent (tests, the benchmark)

    def __call__(
        self,
        promql: str,
        by: tuple[str, ...],
        at: datetime,
        transform: Callable[[QueryResult], QueryResult] | None = None,
    ) -> QueryResult:
        """The answer to `promql` (`transform`ed once, when it is a good one)."""
        with self.lock:
            answer = self.answers.get(promql)
            if answer is None:
                self._forget(self.clock())
                answer = self.answers[promql] = _Answer(at=self.clock())
        with answer.lock:
            result = answer.result
            if result is not None:
                keep = self.fresh if result.error is None else self.failed
                if self.clock() - answer.at < keep:
                    return result
            result = self.prom.query(promql, at, by)
            if transform is not None and result.error is None:
                result = transform(result)
            answer.at, answer.result = self.clock(), result
            self.asked += 1
            return result

    def _forget(self, now: float) -> None:
        """Drop answers no tick asked for lately (objects gone, windows grown)."""
        for promql in [q for q, a in self.answers.items() if now - a.at > 10 * INTERVAL_SECONDS]:
            del self.answers[promql]


class Asker:
    """One tick's look-ups in the shared answers; after a connection failure the rest are not sent
    (one timeout per tick at most, like the analysis)."""

    def __init__(self, shared: Shared, at: datetime) -> None:
        self.shared, self.at, self.down = shared, at, False

    def __call__(
        self,
        promql: str,
        key: tuple[str, ...],
        by: tuple[str, ...] = BY,
        transform: Callable[[QueryResult], QueryResult] | None = None,
    ) -> float | None:
        """The value of `key` (label values in `by` order) in a shared answer; None: no such
        series, not finite, or the query failed."""
        if self.down:
            return None
        res = self.shared(promql, by, self.at, transform)
        if res.error is not None:
            self.down = "talking to" in res.error
            log.info("cost query failed: %s: %s", promql, res.error)
            return None
        value = (res.series or {}).get(key)
        return value if value is not None and math.isfinite(value) else None


def fleets(items: list[dict[str, Any]], meta: Meta) -> dict[str, dict[str, Any]]:
    """The ModelDeployment's own Deployments by revision (raw JSON) among `items` (its labelled ones)."""
    out: dict[str, dict[str, Any]] = {}
    for dep in items:
        if any(o.get("uid") == meta.uid for o in dep["metadata"].get("ownerReferences") or []):
            rev = (dep["metadata"].get("labels") or {}).get(LABEL_REVISION)
            if rev:
                out[rev] = dep
    return out


def measure(
    shared: Shared,
    prices: cost.Prices,
    meta: Meta,
    status: ModelDeploymentStatus,
    deployments: dict[str, dict[str, Any]],
    now: datetime,
    scrape_interval: float,
) -> CostStatus | None:
    """status.cost from the Deployments and Prometheus; None when the stable Deployment is missing."""
    stable_rev = status.stable_revision
    if stable_rev is None or stable_rev not in deployments:
        return None
    try:
        stable = cost.fleet_of(deployments[stable_rev])
    except ValueError as err:
        return CostStatus(time=fmt_time(now), reason=f"stable Deployment: {err}")
    window = window_for(status, now, scrape_interval)
    q = queries(meta.namespace, window, scrape_interval)
    ask = Asker(shared, now)
    n = ask(q["requests"], (meta.name, stable_rev))
    out = cost.assess(prices, stable, None if n is None else n * cost.SECONDS_PER_DAY / window, window)
    out.time = fmt_time(now)
    out.seconds_per_row = ask(q["seconds_per_row"], (meta.name, stable_rev))
    out.peak_rows_per_second = ask(q["peak_rows_per_second"], (meta.name, stable_rev))
    if out.seconds_per_row is not None and out.peak_rows_per_second is not None:
        out.replicas_for_peak = cost.replicas_for_peak(out.peak_rows_per_second, out.seconds_per_row, stable.workers)
        out.seconds_per_row = float(f"{out.seconds_per_row:.4g}")
        out.peak_rows_per_second = round(out.peak_rows_per_second, 3)
    usage = usage_queries(meta.namespace, window)
    pods = (deployments[stable_rev]["metadata"]["name"],)
    cpu, memory = (ask(usage[q], pods, ("pod",), per_deployment) for q in ("used_cpu_cores", "used_memory_bytes"))
    if cpu is not None and memory is not None:
        out.used_cpu_cores = float(f"{cpu:.4g}")
        out.used_memory_gib = float(f"{memory / GIB:.4g}")
        out.used_monthly_usd = cost.used_monthly_usd(prices, cpu, memory / GIB)
    canary_rev = status.canary_revision
    if canary_rev is not None and canary_rev in deployments and status.canary_started_at is not None:
        try:
            canary = cost.fleet_of(deployments[canary_rev])
        except ValueError:
            return out
        age = min(window, rounded_window((now - parse_time(status.canary_started_at)).total_seconds()))
        per_request = queries(meta.namespace, max(age, math.ceil(4 * scrape_interval)), scrape_interval)
        s = ask(per_request["seconds_per_request"], (meta.name, stable_rev))
        c = ask(per_request["seconds_per_request"], (meta.name, canary_rev))
        out.canary_per1k_predictions_usd = cost.canary_per_1k(out.per1k_predictions_usd, prices, stable, canary, s, c)
    return out


class CostWatch:
    """`handlers.Shell.cost`: once a minute, replace `status.cost` in place (the status the tick is
    about to write). Never raises: a figure is never worth a failed tick."""

    def __init__(
        self, deployments: Callable[[Meta], list[dict[str, Any]]], prom: Prometheus, settings: OperatorSettings
    ) -> None:
        """`deployments(meta)`: the Deployments labelled with the object's name (`Kube.deployments_of`, cached)."""
        self.deployments, self.shared = deployments, Shared(prom)
        self.prices, self.scrape_interval = settings.prices(), settings.scrape_interval_seconds
        self.alone = settings.cost_refresh_seconds

    def __call__(
        self, spec: ModelDeploymentSpec, meta: Meta, status: ModelDeploymentStatus, now: datetime, writing: bool = True
    ) -> None:
        if not due(status, now, writing, self.alone):
            return
        try:
            deployments = fleets(self.deployments(meta), meta)
            fresh = measure(
                self.shared, self.prices.override(spec.cost), meta, status, deployments, now, self.scrape_interval
            )
        except ApiException as err:
            log.info("%s/%s: cost not refreshed, listing Deployments failed: %s", meta.namespace, meta.name, err.status)
            return
        except Exception:
            log.exception("%s/%s: computing status.cost failed", meta.namespace, meta.name)
            return
        if fresh is not None:
            status.cost = fresh
