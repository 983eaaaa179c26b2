"""What a prediction costs: the pods a revision requests against a managed per-call endpoint. Pure.

Called by `costwatch` (the kopf shell, about once a minute per ModelDeployment, with the stable
Deployment's pod template and Prometheus' answers) to fill `status.cost`; by `core.plan_analysis`
and `analysis` for the `maxCostIncrease` check (the query, the pod price factor, the verdict).
The CLI's `modeldeploy cost` only renders what this module computed.

A *prediction* is one inference request, answered or refused (managed endpoints bill per call;
a request of n rows counts once). A month is **730 hours** (8,760 h / 12, the convention of cloud price lists),
so a month holds 730 / 24 = 30.42 days. Prices are USD:

    pod hour                = CPU cores requested x cpuCoreHourUsd + memory GiB requested x memoryGiBHourUsd
    monthlyUsd              = pod hour x replicas x 730
    requests per month      = requestsPerDay x 730 / 24
    per1kPredictionsUsd     = monthlyUsd / (requests per month / 1000)          (none at 0 requests)
    managedMonthlyUsd       = requests per month / 1000 x managedPer1kUsd
    crossoverRequestsPerDay = pod hour x replicas x 24 / (managedPer1kUsd / 1000)
    cheaper                 = selfHosted when monthlyUsd < managedMonthlyUsd, else managed
                              (a tie goes to the managed endpoint: nothing to operate)

The crossover does not depend on the month's length: it is the day's pod bill divided by the
price of one call. Requested resources are what a scheduler reserves and a per-pod bill charges;
a container without requests but with limits requests its limits (Kubernetes' default).

A canary's cost per 1,000 predictions is stable's scaled by the pod time each spends per
request: (canary seconds per request x canary pod hour / canary workers) over the same for
stable. It is what the stable fleet would cost per 1,000 predictions at the same utilization if it
served the canary's model: a model twice as slow needs twice the pods for the same traffic.

Measured usage (from the kubelet's cAdvisor, through Prometheus) is reported beside the requests:
usedCpuCores and usedMemoryGiB are the stable pods' mean over requestsWindow, summed over the
pods, and usedMonthlyUsd prices them like the requests (`used_monthly_usd`). monthlyUsd stays the
bill (a scheduler reserves requests); the gap between the two is what right-sizing the requests
could save.

Replicas for the observed peak: ceil(peak rows per second x seconds per row / (workers x
utilization)), at least 1; utilization defaults to 0.7 (headroom for bursts between samples).
Seconds per row is the server's measured request time divided by the rows it predicted; one
worker works on one request at a time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from modeldeploy_operator.api import CostStatus, ModelDeploymentSpec

HOURS_PER_MONTH = 730.0
DAYS_PER_MONTH = HOURS_PER_MONTH / 24
DEFAULT_UTILIZATION = 0.7
SECONDS_PER_DAY = 86_400

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))(?:[eE]([+-]?\d+))?(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_SUFFIX = {
    "": 1.0, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip


def quantity(text: str | int | float, what: str = "quantity") -> float:
    """A Kubernetes resource quantity ('500m', '1.5', '512Mi', '1e9', '2G') as a plain number."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    m = _QUANTITY.match(str(text).strip())
    if m is None:
        raise ValueError(f"{what} {text!r} is not a Kubernetes quantity (for example 500m, 2, 512Mi, 1Gi)")
    value = float(m.group(1)) * (10.0 ** int(m.group(2)) if m.group(2) else 1.0) * _SUFFIX[m.group(3) or ""]
    if value < 0:
        raise ValueError(f"{what} {text!r} is negative")
    return value


@dataclass(frozen=True)
class Prices:
    """USD: one CPU core for an hour, one GiB of memory for an hour, 1,000 calls of a managed endpoint."""

    cpu_core_hour_usd: float
    memory_gib_hour_usd: float
    managed_per_1k_usd: float

    def override(self, spec_cost: Any) -> Prices:
        """These prices with the fields a ModelDeployment's `spec.cost` sets (None: no override)."""
        if spec_cost is None:
            return self
        return Prices(
            _first(spec_cost.cpu_core_hour_usd, self.cpu_core_hour_usd),
            _first(spec_cost.memory_gib_hour_usd, self.memory_gib_hour_usd),
            _first(spec_cost.managed_per_1k_usd, self.managed_per_1k_usd),
        )


DEFAULT_PRICES = Prices(cpu_core_hour_usd=0.04, memory_gib_hour_usd=0.005, managed_per_1k_usd=0.40)


def _first(a: float | None, b: float) -> float:
    return b if a is None else a


@dataclass(frozen=True)
class Fleet:
    """What one revision's pods request (per pod), how many there are, and server workers per pod."""

    cpu_cores: float
    memory_gib: float
    replicas: int
    workers: int = 1

    def pod_hour_usd(self, prices: Prices) -> float:
        return self.cpu_cores * prices.cpu_core_hour_usd + self.memory_gib * prices.memory_gib_hour_usd

    def hour_usd(self, prices: Prices) -> float:
        return self.pod_hour_usd(prices) * self.replicas


def fleet_of(deployment: Mapping[str, Any]) -> Fleet:
    """The Fleet of a Deployment (raw JSON as the API server returns it): the sum of its containers'
    CPU and memory requests (limits where a request is absent), spec.replicas, MODELDEPLOY_WORKERS."""
    pod = deployment.get("spec", {}).get("template", {}).get("spec", {})
    cpu = mem = 0.0
    workers = 1
    for c in pod.get("containers") or []:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        name = c.get("name", "?")
        if "cpu" in req or "cpu" in lim:
            cpu += quantity(req["cpu"] if "cpu" in req else lim["cpu"], f"container {name} cpu")
        if "memory" in req or "memory" in lim:
            mem += quantity(req["memory"] if "memory" in req else lim["memory"], f"container {name} memory") / 2.0**30
        for e in c.get("env") or []:
            if e.get("name") == "MODELDEPLOY_WORKERS" and str(e.get("value", "")).isdigit():
                workers = max(1, int(e["value"]))
    replicas = deployment.get("spec", {}).get("replicas")
    return Fleet(cpu, mem, 1 if replicas is None else int(replicas), workers)


def significant(x: float, digits: int = 6) -> float:
    """x to `digits` significant digits (prices per 1k can be tiny: $0.000282)."""
    return float(f"{x:.{digits}g}")


def window_text(seconds: int) -> str:
    """A PromQL duration, in the largest unit that divides it: 86400 -> 1d, 3600 -> 1h, 90 -> 90s."""
    for unit, size in (("d", SECONDS_PER_DAY), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def usd(x: float) -> str:
    return f"${x:,.2f}" if x >= 0.995 or x == 0 else f"${x:.4g}"


def per_day(x: float) -> str:
    return f"{x:,.0f} requests/day"


def crossover_requests_per_day(prices: Prices, fleet: Fleet) -> float | None:
    """Requests/day at which the pods and the managed endpoint cost the same (None: never)."""
    if prices.managed_per_1k_usd <= 0 or fleet.hour_usd(prices) <= 0:
        return None
    return fleet.hour_usd(prices) * 24 / (prices.managed_per_1k_usd / 1000)


def assess(
    prices: Prices,
    fleet: Fleet,
    requests_per_day: float | None,
    window_seconds: int | None = None,
) -> CostStatus:
    """`status.cost` for a stable fleet at an observed volume (None: volume unknown)."""
    monthly = fleet.hour_usd(prices) * HOURS_PER_MONTH
    crossover = crossover_requests_per_day(prices, fleet)
    out = CostStatus(
        requests_per_day=None if requests_per_day is None else round(requests_per_day, 1),
        requests_window=None if window_seconds is None else window_text(window_seconds),
        monthly_usd=round(monthly, 2),
        crossover_requests_per_day=None if crossover is None else round(crossover),
        replicas=fleet.replicas,
        pod_hour_usd=significant(fleet.pod_hour_usd(prices)),
        workers=fleet.workers,
    )
    if monthly <= 0:
        out.reason = "the pods request no CPU or memory: set spec.serving.resources.requests to price them"
        return out
    if requests_per_day is None:
        out.reason = "request volume unknown (Prometheus did not answer)"
        return out
    monthly_requests = requests_per_day * DAYS_PER_MONTH
    managed = monthly_requests / 1000 * prices.managed_per_1k_usd
    out.managed_monthly_usd = round(managed, 2)
    out.per1k_predictions_usd = significant(monthly / (monthly_requests / 1000)) if monthly_requests > 0 else None
    volume = per_day(requests_per_day)
    if monthly < managed:
        out.cheaper = "selfHosted"
        out.reason = (
            f"at {volume} the pods ({usd(monthly)}/month) cost {managed / monthly:.1f}x less than the managed "
            f"endpoint ({usd(managed)}/month); break-even at {per_day(crossover or 0)}"
        )
    else:
        out.cheaper = "managed"
        until = f"; self-hosting pays from {per_day(crossover)}" if crossover is not None else ""
        ratio = f" {monthly / managed:.1f}x" if managed > 0 else ""
        out.reason = (
            f"at {volume} the managed endpoint ({usd(managed)}/month) costs{ratio} less than the pods "
            f"({usd(monthly)}/month){until}"
        )
    return out


def used_monthly_usd(prices: Prices, cpu_cores: float, memory_gib: float) -> float:
    """What the pods' measured CPU and memory would cost for a month if billed by use (a usage-based
    bill, or the floor a right-sized request could reach): cores x cpuCoreHourUsd + GiB x
    memoryGiBHourUsd, x 730 h."""
    return round((cpu_cores * prices.cpu_core_hour_usd + memory_gib * prices.memory_gib_hour_usd) * HOURS_PER_MONTH, 2)


def canary_per_1k(
    stable_per_1k: float | None,
    prices: Prices,
    stable: Fleet,
    canary: Fleet,
    stable_seconds_per_request: float | None,
    canary_seconds_per_request: float | None,
) -> float | None:
    """The canary's cost per 1,000 predictions beside stable's (see the module docstring)."""
    ratio = cost_ratio(prices, stable, canary, stable_seconds_per_request, canary_seconds_per_request)
    if stable_per_1k is None or ratio is None:
        return None
    return significant(stable_per_1k * ratio)


def cost_ratio(
    prices: Prices,
    stable: Fleet,
    canary: Fleet,
    stable_seconds_per_request: float | None,
    canary_seconds_per_request: float | None,
) -> float | None:
    """Canary pod cost per request over stable's; None when either is unmeasured or stable's is 0."""
    if stable_seconds_per_request is None or canary_seconds_per_request is None:
        return None
    s = stable_seconds_per_request * stable.pod_hour_usd(prices) / stable.workers
    c = canary_seconds_per_request * canary.pod_hour_usd(prices) / canary.workers
    if s <= 0 or not math.isfinite(s) or not math.isfinite(c):
        return None
    return c / s


def replicas_for_peak(
    peak_rows_per_second: float, seconds_per_row: float, workers: int, utilization: float = DEFAULT_UTILIZATION
) -> int:
    """Pods needed so that the observed peak keeps each worker busy at most `utilization` of the time."""
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization {utilization!r} must be in (0, 1]")
    if workers < 1:
        raise ValueError(f"workers {workers!r} must be at least 1")
    busy = max(peak_rows_per_second, 0.0) * max(seconds_per_row, 0.0)  # worker-seconds per second
    return max(1, math.ceil(busy / (workers * utilization) - 1e-9))


# --- the analysis gate `maxCostIncrease` --------------------------------------------------------

COST_CHECK = "cost-increase"
COST_STABLE_SECONDS = "cost-stable-seconds"
# Request times closer than this are compared as equal: below a millisecond the mean is dominated
# by scheduling noise on a busy node (two equivalent sub-millisecond models measured 0.19x to 3.2x
# apart over 5-30 s windows on 2 shared cores), and a millisecond of pod time is not a cost.
MIN_TIME_DIFFERENCE_SECONDS = 0.001
_DURATION = "modeldeploy_request_duration_seconds"


def seconds_per_request_query(namespace: str, model: str, revision: str, window: int) -> str:
    """PromQL: one revision's mean request time over the window (answered and refused alike)."""
    sel = f'{{namespace="{namespace}",model="{model}",revision="{revision}"}}'
    w = window_text(window)
    return f"sum(increase({_DURATION}_sum{sel}[{w}])) / sum(increase({_DURATION}_count{sel}[{w}]))"


def seconds_per_request_ratio_query(namespace: str, model: str, canary: str, stable: str, window: int) -> str:
    """PromQL: the canary's mean request time over stable's, same window."""
    c = seconds_per_request_query(namespace, model, canary, window)
    s = seconds_per_request_query(namespace, model, stable, window)
    return f"({c}) / ({s})"


def spec_fleet(spec: ModelDeploymentSpec) -> Fleet:
    """The pods the spec asks for (the canary's, while one runs): requests, else limits."""
    res = spec.serving.resources
    req, lim = (res.requests, res.limits) if res is not None else ({}, {})
    cpu = req.get("cpu", lim.get("cpu"))
    mem = req.get("memory", lim.get("memory"))
    return Fleet(
        quantity(cpu, "cpu") if cpu is not None else 0.0,
        quantity(mem, "memory") / 2.0**30 if mem is not None else 0.0,
        spec.replicas,
        spec.serving.workers,
    )


def pod_price_factor(prices: Prices, spec: ModelDeploymentSpec, stable: CostStatus | None) -> float:
    """(canary pod price / its workers) over stable's, stable's as status.cost last priced it; 1 when
    either is unknown or unpriced (then the gate compares request time alone)."""
    if stable is None or not stable.pod_hour_usd or not stable.workers:
        return 1.0
    try:
        canary = spec_fleet(spec)
    except ValueError:
        return 1.0
    c = canary.pod_hour_usd(prices.override(spec.cost)) / canary.workers
    return c / (stable.pod_hour_usd / stable.workers) if c > 0 else 1.0


def cost_check(
    max_increase: float, time_ratio: float | None, price_factor: float, stable_seconds: float | None = None
) -> tuple[Literal["Passed", "Failed", "Inconclusive"], float | None, str]:
    """The gate's verdict, value and sentence from the measured time ratio, stable's mean request
    time (request times within MIN_TIME_DIFFERENCE_SECONDS count as equal) and the price factor."""
    if time_ratio is None or not math.isfinite(time_ratio):
        return "Inconclusive", None, "cost per prediction: no request time measured for both revisions"
    close = stable_seconds is not None and abs(time_ratio - 1) * stable_seconds < MIN_TIME_DIFFERENCE_SECONDS
    time_part = 1.0 if close else time_ratio
    ratio = time_part * price_factor
    bad = ratio > max_increase
    parts = []
    if close and time_ratio != 1:
        ms = 1000 * (stable_seconds or 0)
        parts.append(f"request times {ms:.2g} ms x{time_ratio:.3g} are within 1 ms: equal")
    elif price_factor != 1:
        parts.append(f"request time x{time_ratio:.3g}")
    if price_factor != 1:
        parts.append(f"pod price per worker x{price_factor:.3g}")
    why = f" ({', '.join(parts)})" if parts else ""
    msg = f"canary cost per prediction {ratio:.3g}x stable's {'>' if bad else '<='} {max_increase:g}x{why}"
    return ("Failed" if bad else "Passed"), ratio, msg
