"""What a prediction costs (pure `cost` module): the issue's worked example, the formulas, quantities,
the canary's cost beside stable's, replicas for a peak, and the `spec.cost` / `status.cost` API."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy_operator import cost
from modeldeploy_operator.api import CostSpec, ModelDeploymentStatus, SpecError, parse_spec
from modeldeploy_operator.cost import Fleet, Prices, assess

# The chart's default prices: $0.04 per vCPU-hour and $0.005 per GiB-hour (the order of per-pod
# on-demand prices such as GKE Autopilot's $0.0445 and $0.0049225 in us-central1), and $0.40 per
# 1,000 calls of a managed endpoint.
PRICES = Prices(cpu_core_hour_usd=0.04, memory_gib_hour_usd=0.005, managed_per_1k_usd=0.40)
# The always-on box: two pods of 4 cores and 6 GiB each ($0.38/hour, $277.40 a month of 730 h).
BOX = Fleet(cpu_cores=4, memory_gib=6, replicas=2)


def test_worked_example_per_call_cheaper_at_5000_box_cheaper_at_500000_break_even_near_23000() -> None:
    low = assess(PRICES, BOX, 5_000, 86_400)
    assert low.monthly_usd == 277.40
    assert low.managed_monthly_usd == pytest.approx(60.83, abs=0.005)
    assert low.cheaper == "managed"
    assert low.crossover_requests_per_day == 22_800
    assert low.requests_window == "1d"
    assert low.reason == (
        "at 5,000 requests/day the managed endpoint ($60.83/month) costs 4.6x less than the pods "
        "($277.40/month); self-hosting pays from 22,800 requests/day"
    )
    high = assess(PRICES, BOX, 500_000)
    assert high.cheaper == "selfHosted"
    assert high.managed_monthly_usd == pytest.approx(6_083.33, abs=0.005)
    assert high.per1k_predictions_usd == pytest.approx(277.40 / (500_000 * 730 / 24 / 1000), rel=1e-5)
    assert high.reason is not None and high.reason.startswith(
        "at 500,000 requests/day the pods ($277.40/month) cost 21.9x less than the managed endpoint ($6,083.33/month)"
    )
    # at the break-even both shapes cost the same; just below it the managed endpoint wins, just above the pods
    assert assess(PRICES, BOX, 22_800).managed_monthly_usd == pytest.approx(277.40, abs=0.005)
    assert assess(PRICES, BOX, 22_700).cheaper == "managed"
    assert assess(PRICES, BOX, 22_900).cheaper == "selfHosted"


def test_the_crossover_does_not_depend_on_the_month_length() -> None:
    # the day's pod bill divided by the price of one call
    assert cost.crossover_requests_per_day(PRICES, BOX) == pytest.approx(0.38 * 24 / 0.0004)
    assert cost.crossover_requests_per_day(Prices(0.04, 0.005, 0.0), BOX) is None


def test_no_traffic_no_requests_and_no_volume_are_said_plainly() -> None:
    idle = assess(PRICES, BOX, 0.0, 3_600)
    assert idle.cheaper == "managed" and idle.per1k_predictions_usd is None and idle.managed_monthly_usd == 0
    assert idle.requests_window == "1h"
    free = assess(PRICES, Fleet(0, 0, 2), 1_000)
    assert free.cheaper is None and free.reason is not None and "spec.serving.resources.requests" in free.reason
    unknown = assess(PRICES, BOX, None)
    assert unknown.cheaper is None and unknown.monthly_usd == 277.40 and "Prometheus" in (unknown.reason or "")


@pytest.mark.parametrize(
    ("text", "value"),
    [("500m", 0.5), ("2", 2.0), ("1.5", 1.5), ("512Mi", 512 * 2**20), ("1Gi", 2**30), ("1e9", 1e9), ("2G", 2e9),
     ("100k", 1e5), (".5", 0.5), ("250u", 2.5e-4)],
)  # fmt: skip
def test_kubernetes_quantities(text: str, value: float) -> None:
    assert cost.quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("bad", ["", "1.2.3", "5 cores", "1gi", "-1"])
def test_a_bad_quantity_names_the_value(bad: str) -> None:
    with pytest.raises(ValueError, match="cpu"):
        cost.quantity(bad, "cpu")


def test_fleet_of_a_deployment_sums_requests_and_falls_back_to_limits() -> None:
    dep = {
        "spec": {
            "replicas": 3,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "server", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                         "env": [{"name": "MODELDEPLOY_WORKERS", "value": "2"}]},
                        {"name": "sidecar", "resources": {"limits": {"cpu": "250m", "memory": "512Mi"}}},
                    ]
                }
            },
        }
    }  # fmt: skip
    assert cost.fleet_of(dep) == Fleet(cpu_cores=0.75, memory_gib=1.5, replicas=3, workers=2)
    assert cost.fleet_of({"spec": {"replicas": 0, "template": {"spec": {"containers": [{"name": "s"}]}}}}) == Fleet(
        0, 0, 0, 1
    )


def test_a_slower_canary_costs_more_per_1k() -> None:
    stable = assess(PRICES, BOX, 500_000)
    one_pod = Fleet(4, 6, 1)
    same = cost.canary_per_1k(stable.per1k_predictions_usd, PRICES, BOX, one_pod, 0.004, 0.004)
    assert same == stable.per1k_predictions_usd
    slower = cost.canary_per_1k(stable.per1k_predictions_usd, PRICES, BOX, one_pod, 0.004, 0.010)
    assert slower == pytest.approx(2.5 * (stable.per1k_predictions_usd or 0), rel=1e-4)
    bigger = cost.cost_ratio(PRICES, BOX, Fleet(8, 12, 1), 0.004, 0.004)  # twice the pod for the same time
    assert bigger == pytest.approx(2.0)
    more_workers = cost.cost_ratio(PRICES, BOX, Fleet(4, 6, 1, workers=2), 0.004, 0.004)
    assert more_workers == pytest.approx(0.5)
    assert cost.canary_per_1k(None, PRICES, BOX, one_pod, 0.004, 0.004) is None
    assert cost.cost_ratio(PRICES, BOX, one_pod, None, 0.004) is None


@pytest.mark.parametrize(
    ("peak", "per_row", "workers", "expected"),
    [(0.0, 0.01, 1, 1), (70.0, 0.01, 1, 1), (71.0, 0.01, 1, 2), (1_000.0, 0.002, 2, 2), (1_000.0, 0.002, 1, 3)],
)
def test_replicas_for_the_observed_peak(peak: float, per_row: float, workers: int, expected: int) -> None:
    # 70 rows/s x 10 ms = 0.7 busy worker: one pod at 70%; 71 rows/s needs a second
    assert cost.replicas_for_peak(peak, per_row, workers) == expected


def test_replicas_for_peak_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="utilization"):
        cost.replicas_for_peak(1, 1, 1, utilization=0)
    with pytest.raises(ValueError, match="workers"):
        cost.replicas_for_peak(1, 1, 0)


def test_spec_cost_overrides_only_what_it_sets() -> None:
    spec = parse_spec(
        {"model": {"uri": "https://m.example/iris.skops", "version": "1"}, "cost": {"managedPer1kUsd": 1.5}}
    )
    assert spec.cost == CostSpec(managed_per_1k_usd=1.5)
    assert PRICES.override(spec.cost) == Prices(0.04, 0.005, 1.5)
    assert PRICES.override(None) == PRICES


@pytest.mark.parametrize(
    ("cost_spec", "message"),
    [({"cpuCoreHourUsd": -1}, "spec.cost.cpuCoreHourUsd: Input should be greater than or equal to 0 (got -1)"),
     ({"memoryGibHourUsd": 1}, "spec.cost.memoryGibHourUsd: Extra inputs are not permitted"),
     ({"managedPer1kUsd": "cheap"}, "spec.cost.managedPer1kUsd: Input should be a valid number")],
)  # fmt: skip
def test_bad_spec_cost_names_the_field(cost_spec: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match="spec.cost") as err:
        parse_spec({"model": {"uri": "https://m.example/iris.skops", "version": "1"}, "cost": cost_spec})
    assert message in str(err.value)


def test_status_cost_wire_names_are_the_contract() -> None:
    c = assess(PRICES, BOX, 500_000, 86_400)
    c.canary_per1k_predictions_usd = 0.02
    wire = ModelDeploymentStatus(cost=c).model_dump(by_alias=True, exclude_none=True)["cost"]
    assert set(wire) >= {
        "requestsPerDay", "requestsWindow", "monthlyUsd", "per1kPredictionsUsd", "managedMonthlyUsd",
        "crossoverRequestsPerDay", "cheaper", "reason", "canaryPer1kPredictionsUsd",
    }  # fmt: skip
    c.used_cpu_cores, c.used_memory_gib, c.used_monthly_usd = 0.5, 0.25, 15.51
    wire = ModelDeploymentStatus(cost=c).model_dump(by_alias=True, exclude_none=True)["cost"]
    assert {"usedCpuCores": 0.5, "usedMemoryGiB": 0.25, "usedMonthlyUsd": 15.51}.items() <= wire.items()
    assert ModelDeploymentStatus.model_validate({"cost": wire}).cost == c


def test_cli_cost_prints_the_table_the_break_even_and_the_peak_replicas() -> None:
    from modeldeploy_operator import cli
    from modeldeploy_operator.cli_format import render_cost

    c = assess(PRICES, BOX, 5_000, 86_400)
    c.time, c.peak_rows_per_second, c.seconds_per_row = "2026-12-01T23:50:00Z", 120.0, 0.012
    c.replicas_for_peak = cost.replicas_for_peak(120.0, 0.012, 1)
    c.canary_per1k_predictions_usd = round(2 * (c.per1k_predictions_usd or 0), 6)
    status = {"stableRevision": "5d8f7c", "stableVersion": "7", "canaryRevision": "9a1b2c", "canaryVersion": "8",
              "cost": c.model_dump(by_alias=True, exclude_none=True)}  # fmt: skip
    spec = {"model": {"uri": "https://m.example/wine.skops", "version": "8"},
            "serving": {"resources": {"requests": {"cpu": "4", "memory": "6Gi"}}}}  # fmt: skip
    view = render_cost({"metadata": {"name": "wine", "namespace": "ml"}, "spec": spec, "status": status})
    lines = view.splitlines()
    assert lines[0] == "Cost of wine in ml, stable 7 (revision 5d8f7c), computed 2026-12-01T23:50:00Z"
    assert lines[1] == "Volume:     5,000 requests/day (measured over the last 1d)"
    assert lines[2].split() == ["SHAPE", "MONTHLY", "PER", "1K", "PREDICTIONS", "WHAT"]
    assert lines[3].split()[:3] == ["self-hosted", "$277.40", "$1.82"]
    assert "2 pods requesting cpu 4, memory 6Gi each" in lines[3]
    assert lines[4].split()[:3] == ["managed", "$60.83", "$0.4"]
    assert lines[5].split()[:3] == ["canary", "-", "$3.65"] and "2.00x stable per prediction" in lines[5]
    assert "Break-even: 22,800 requests/day" in view
    assert "Cheaper:    managed: at 5,000 requests/day the managed endpoint" in view
    # 120 rows/s x 12 ms = 1.44 busy workers; at 70% per worker: 3 pods
    assert "Peak:       120 rows/s x 12 ms/row -> 3 replicas at 70% busy workers (running 2)" in view
    assert "Used:       not measured (no cAdvisor series in Prometheus)" in view
    c.used_cpu_cores, c.used_memory_gib = 0.0123, 0.5
    c.used_monthly_usd = cost.used_monthly_usd(PRICES, 0.0123, 0.5)
    status["cost"] = c.model_dump(by_alias=True, exclude_none=True)
    view = render_cost({"metadata": {"name": "wine", "namespace": "ml"}, "spec": spec, "status": status})
    # (0.0123 x $0.04 + 0.5 x $0.005) x 730 h = $2.18
    assert "Used:       0.0123 CPU cores, 512 MiB in all (kubelet, mean over the last 1d) = $2.18/month" in view
    assert cli.parser().parse_args(["cost", "wine", "-n", "ml"]).fn is cli.cmd_cost
    empty = render_cost({"metadata": {"name": "wine", "namespace": "ml"}, "spec": spec, "status": {}})
    assert "no cost yet" in empty


def test_costwatch_window_is_the_stable_revisions_life_rounded_down_within_a_day() -> None:
    from datetime import UTC, datetime

    from modeldeploy_operator import costwatch
    from modeldeploy_operator.api import HistoryEntry

    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    st = ModelDeploymentStatus(stable_revision="abc", history=[
        HistoryEntry(revision="old", version="1", outcome="Deployed", time="2026-11-01T00:00:00Z"),
        HistoryEntry(revision="abc", version="2", outcome="Promoted", time="2026-12-01T11:57:30Z"),
    ])  # fmt: skip
    assert costwatch.window_for(st, now, 2.0) == 120  # 150 s of life, rounded down
    assert costwatch.window_for(st, now, 30.0) == 120
    st.history[-1].time = "2026-12-01T11:59:50Z"
    assert costwatch.window_for(st, now, 2.0) == 60 and costwatch.window_for(st, now, 30.0) == 120  # 4 scrapes
    st.history[-1].time = "2026-11-20T00:00:00Z"
    assert costwatch.window_for(st, now, 2.0) == 86_400
    deploying = ModelDeploymentStatus(stable_revision="new", history=st.history)
    assert costwatch.window_for(deploying, now, 2.0) == 60
    full = [HistoryEntry(revision=f"r{i}", version="1", outcome="RolledBack", time="2026-11-30T00:00:00Z")
            for i in range(10)]  # fmt: skip
    assert costwatch.window_for(ModelDeploymentStatus(stable_revision="abc", history=full), now, 2.0) == 86_400
    st.history[-1].time = "2026-12-01T10:00:00Z"
    assert costwatch.window_for(st, now, 2.0) == 7200  # 2 h of life: shared with other objects of that age
    st.history[-1].time = "2026-12-01T09:59:00Z"
    assert costwatch.window_for(st, now, 2.0) == 7200
    q = costwatch.queries("ml", 86_400, 2.0)
    sel, by = '{namespace="ml"}', "sum by (model, revision)"
    assert q["requests"] == f"{by} (increase(modeldeploy_requests_total{sel}[1d]))"
    assert q["peak_rows_per_second"] == f"max_over_time({by} (rate(modeldeploy_predictions_total{sel}[1m]))[1d:1m])"
    short = costwatch.queries("ml", 120, 2.0)["peak_rows_per_second"]
    assert short.endswith("[1m]))[2m:2s])")  # every scrape while the window is short, at most 1,440 points
    assert q["seconds_per_row"] == (
        f"{by} (increase(modeldeploy_request_duration_seconds_sum{sel}[1d])) / "
        f"({by} (increase(modeldeploy_predictions_total{sel}[1d])) > 0)"
    )
    usage = costwatch.usage_queries("ml", 86_400)
    pods = '{namespace="ml",container!="",container!="POD"}'
    assert usage["used_cpu_cores"] == f"sum by (pod) (rate(container_cpu_usage_seconds_total{pods}[1d]))"
    assert usage["used_memory_bytes"] == f"sum by (pod) (avg_over_time(container_memory_working_set_bytes{pods}[1d]))"
    st.history[-1].time = "2026-11-20T00:00:00Z"
    assert costwatch.due(st, now) and not costwatch.due(ModelDeploymentStatus(), now)
    st.cost = assess(PRICES, BOX, 1.0)
    st.cost.time = "2026-12-01T11:59:30Z"
    assert not costwatch.due(st, now)
    st.cost.time = "2026-12-01T11:59:00Z"
    assert costwatch.due(st, now)
    # a tick that would write status only for the cost waits five minutes (no request of its own)
    assert not costwatch.due(st, now, writing=False)
    st.cost.time = "2026-12-01T11:55:00Z"
    assert costwatch.due(st, now, writing=False)
    # MODELDEPLOY_OPERATOR_COST_REFRESH_SECONDS shortens that wait, never below the minute
    st.cost.time = "2026-12-01T11:59:00Z"
    assert costwatch.due(st, now, writing=False, alone=60)
    st.cost.time = "2026-12-01T11:59:30Z"
    assert not costwatch.due(st, now, writing=False, alone=10)


def _gate_spec(max_increase: float = 1.2, resources: dict[str, str] | None = None) -> Any:
    raw: dict[str, Any] = {
        "model": {"uri": "https://m.example/iris.skops", "version": "2"},
        "rollout": {"analysis": {"minRequests": 50, "maxCostIncrease": max_increase}},
    }
    if resources is not None:
        raw["serving"] = {"resources": {"requests": resources}}
    return parse_spec(raw)


def test_max_cost_increase_is_a_check_over_the_same_window_as_the_others() -> None:
    from modeldeploy_operator.analysis import QueryResult, evaluate, plan

    a = _gate_spec().rollout.analysis
    p = plan(a, "ml", "iris", "can", step=1, weight=20, window=30, stable="stb")
    q = {x.name: x.promql for x in p.queries}
    mean = 'sum(increase(modeldeploy_request_duration_seconds_sum{{namespace="ml",model="iris",revision="{r}"}}[30s]))'
    assert q["cost-increase"].startswith("(" + mean.format(r="can") + " / ")
    assert 'revision="stb"}[30s]))' in q["cost-increase"]
    assert "cost-increase" not in {x.name for x in plan(a, "ml", "iris", "can", 1, 20, 30).queries}  # no stable

    def judge(ratio: float | None, n: float = 400, factor: float = 1.0) -> Any:
        fp = plan(a, "ml", "iris", "can", step=1, weight=20, window=30, stable="stb", price_factor=factor)
        res = {"requests": QueryResult(n), "errors": QueryResult(0), "latency-p99": QueryResult(0.01),
               "cost-increase": QueryResult(ratio)}  # fmt: skip
        return evaluate(a, fp, res, "2026-12-01T23:00:00Z")

    slow = judge(1.5)
    assert slow.verdict == "Failed"
    assert slow.message == "canary cost per prediction 1.5x stable's > 1.2x"
    check = slow.checks[-1]
    assert (check.name, check.value, check.threshold, check.samples) == ("cost-increase", 1.5, "<= 1.2", 400)
    assert judge(1.1).verdict == "Passed"
    bigger = judge(1.0, factor=2.0)
    assert bigger.verdict == "Failed" and "pod price per worker x2" in bigger.message
    assert judge(None).verdict == "Inconclusive"
    quiet = judge(3.0, n=10)  # too few requests: no cost verdict, the whole check is Inconclusive
    assert quiet.verdict == "Inconclusive" and all(c.name != "cost-increase" for c in quiet.checks)
    broken = evaluate(a, plan(a, "ml", "iris", "can", 1, 20, 30, "stb"),
                      {"requests": QueryResult(400), "errors": QueryResult(0), "latency-p99": QueryResult(0.01),
                       "cost-increase": QueryResult(error="boom")}, "2026-12-01T23:00:00Z")  # fmt: skip
    assert broken.verdict == "Error"


def test_the_gates_pod_price_factor_compares_the_canarys_pods_with_stables_last_priced_ones() -> None:
    from modeldeploy_operator.core import plan_analysis
    from modeldeploy_operator.model import Config, Meta

    stable_cost = assess(PRICES, Fleet(4, 6, 2), 1_000)  # pod $0.19/hour, 1 worker
    assert cost.pod_price_factor(PRICES, _gate_spec(resources={"cpu": "4", "memory": "6Gi"}), stable_cost) == 1.0
    doubled = cost.pod_price_factor(PRICES, _gate_spec(resources={"cpu": "8", "memory": "12Gi"}), stable_cost)
    assert doubled == pytest.approx(2.0)
    assert cost.pod_price_factor(PRICES, _gate_spec(), None) == 1.0  # stable not priced yet: time alone
    assert cost.pod_price_factor(PRICES, _gate_spec(), stable_cost) == 1.0  # canary requests nothing
    spec = _gate_spec(resources={"cpu": "8", "memory": "12Gi"})
    st = ModelDeploymentStatus(stable_revision="stb", canary_revision="can", current_step=1, canary_weight=20,
                               step_started_at="2026-12-01T23:00:00Z", cost=stable_cost)  # fmt: skip
    from datetime import UTC, datetime

    p = plan_analysis(spec, st, datetime(2026, 12, 1, 23, 1, tzinfo=UTC), meta=Meta("iris", "ml"),
                      config=Config(prices=PRICES))  # fmt: skip
    assert p is not None and p.price_factor == pytest.approx(2.0)
    assert 'revision="stb"' in {x.name: x.promql for x in p.queries}["cost-increase"]


def test_max_cost_increase_below_1_is_refused_with_the_field_named() -> None:
    with pytest.raises(
        SpecError, match=r"spec.rollout.analysis.maxCostIncrease: Input should be greater than or equal to 1"
    ):
        _gate_spec(0.8)


def test_tiny_costs_per_1k_keep_six_significant_digits() -> None:
    small = assess(PRICES, Fleet(0.25, 0.25, 2), 2_500_000)  # $16.43 a month over 76 million requests
    exact = 2 * (0.25 * 0.04 + 0.25 * 0.005) * 730 / (2_500_000 * 730 / 24 / 1000)
    assert small.per1k_predictions_usd == pytest.approx(exact, rel=1e-5)


def test_the_cost_gate_counts_request_times_within_a_millisecond_as_equal_and_uses_the_canarys_life() -> None:
    from modeldeploy_operator.analysis import QueryResult, evaluate, plan

    a = _gate_spec(2.0).rollout.analysis
    p = plan(a, "ml", "iris", "can", step=1, weight=20, window=5, stable="stb", since_canary=90)
    q = {x.name: x.promql for x in p.queries}
    assert "[90s]" in q["cost-increase"] and "[5s]" not in q["cost-increase"]  # cumulative, like the judge's
    assert q["cost-stable-seconds"] == (
        'sum(increase(modeldeploy_request_duration_seconds_sum{namespace="ml",model="iris",revision="stb"}[90s])) / '
        'sum(increase(modeldeploy_request_duration_seconds_count{namespace="ml",model="iris",revision="stb"}[90s]))'
    )

    def judge(ratio: float, stable_seconds: float, factor: float = 1.0) -> Any:
        fp = plan(a, "ml", "iris", "can", step=1, weight=20, window=5, stable="stb", price_factor=factor)
        res = {"requests": QueryResult(400), "errors": QueryResult(0), "latency-p99": QueryResult(0.01),
               "cost-increase": QueryResult(ratio), "cost-stable-seconds": QueryResult(stable_seconds)}  # fmt: skip
        return evaluate(a, fp, res, "2026-12-01T23:00:00Z")

    noise = judge(3.24, 0.0002)  # 0.2 ms against 0.65 ms: seen between two equivalent models on a busy node
    gate = next(c for c in noise.checks if c.name == "cost-increase")
    assert gate.verdict == "Passed" and gate.value == 1.0
    assert (
        gate.message
        == "canary cost per prediction 1x stable's <= 2x (request times 0.2 ms x3.24 are within 1 ms: equal)"
    )
    assert judge(435.0, 0.0002).verdict == "Failed"  # 0.6 s on 15% of rows: 90 ms per request
    assert judge(2.5, 0.004).verdict == "Failed"  # 4 ms against 10 ms
    bigger_pods = next(c for c in judge(1.1, 0.0002, factor=3.0).checks if c.name == "cost-increase")
    assert (
        bigger_pods.verdict == "Failed"
        and bigger_pods.value == 3.0
        and "pod price per worker x3" in bigger_pods.message
    )
