"""Runs an analysis plan against Prometheus (prometheus-api-client's PrometheusConnect.custom_query).

Called by `handlers` when `core.plan_analysis` says a check is due. Every query's outcome is a
`QueryResult`: a scalar, None for an empty result, or the error text; connection problems and
non-200 answers never raise out of here (they make the check Error, which holds the rollout).
"""

from __future__ import annotations

import math
import os
from datetime import datetime
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from modeldeploy_operator.analysis import AnalysisPlan, QueryResult


class Prometheus:
    def __init__(
        self,
        url: str,
        timeout_seconds: float,
        *,
        insecure_skip_verify: bool = False,
        bearer_token_file: str | None = None,
    ) -> None:
        # no retries: the next tick is the retry, and an outage must be reported, not waited out.
        # https is verified (system CAs, or REQUESTS_CA_BUNDLE): a forged answer could promote a canary.
        self.url = url
        self.timeout = timeout_seconds
        headers = None
        if bearer_token_file:
            with open(bearer_token_file, encoding="utf-8") as f:
                headers = {"Authorization": f"Bearer {f.read().strip()}"}
        self.client = PrometheusConnect(
            url=url, headers=headers, disable_ssl=insecure_skip_verify, retry=Retry(total=0), timeout=timeout_seconds
        )
        settle_environment(self.client._session, url, bearer=headers is not None)

    def query(self, promql: str, at: datetime, by: tuple[str, ...] = ()) -> QueryResult:
        try:
            data: Any = self.client.custom_query(promql, params={"time": f"{at.timestamp():.3f}"})
        except PrometheusApiClientException as err:
            return QueryResult(error=_short(str(err)))
        except requests.RequestException as err:
            return QueryResult(error=f"{type(err).__name__} talking to {self.url}: {_short(str(err))}")
        return vector(data, by) if by else scalar(data)

    def run(self, plan: AnalysisPlan, at: datetime) -> dict[str, QueryResult]:
        out: dict[str, QueryResult] = {}
        for q in plan.queries:
            out[q.name] = self.query(q.promql, at, q.by)
            if out[q.name].error is not None and "talking to" in (out[q.name].error or ""):
                # unreachable: do not wait one timeout per query
                out.update({rest.name: out[q.name] for rest in plan.queries if rest.name not in out})
                break
        return out


def settle_environment(session: requests.Session, url: str, *, bearer: bool) -> None:
    """Read once what requests would otherwise read from the environment on every query.

    With `trust_env` a Session looks up proxy variables, the CA bundle variables and `~/.netrc`
    for each request; at 1,000 objects that was about a tenth of the operator's CPU (bench/README.md).
    The same settings are taken here, once: HTTP(S)_PROXY/NO_PROXY for this URL, REQUESTS_CA_BUNDLE
    (else CURL_CA_BUNDLE) when verifying, `~/.netrc` credentials when no bearer token is sent."""
    session.proxies.update(requests.utils.get_environ_proxies(url))
    if session.verify is True:
        session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    if not bearer:
        session.auth = requests.utils.get_netrc_auth(url)
    session.trust_env = False


def scalar(data: Any) -> QueryResult:
    """An instant vector with at most one sample (queries aggregate), or a scalar result."""
    if not data:
        return QueryResult(value=None)
    if isinstance(data, list) and isinstance(data[0], dict) and "value" in data[0]:
        if len(data) > 1:
            return QueryResult(error=f"query returned {len(data)} series; aggregate it to one (sum, max, ...)")
        raw = data[0]["value"][1]
    elif isinstance(data, list) and len(data) == 2:  # resultType scalar
        raw = data[1]
    else:
        return QueryResult(error=f"unexpected result shape: {str(data)[:200]}")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return QueryResult(error=f"not a number: {raw!r}")
    return QueryResult(value=None if math.isnan(value) else value)


def vector(data: Any, by: tuple[str, ...]) -> QueryResult:
    """An instant vector, one sample per combination of the `by` labels (a missing label is "")."""
    if not data:
        return QueryResult(series={})
    if not isinstance(data, list) or not all(isinstance(d, dict) and "value" in d for d in data):
        return QueryResult(error=f"unexpected result shape: {str(data)[:200]}")
    series: dict[tuple[str, ...], float] = {}
    for d in data:
        labels = d.get("metric") or {}
        try:
            value = float(d["value"][1])
        except (TypeError, ValueError, IndexError):
            return QueryResult(error=f"not a number: {d['value']!r}")
        series[tuple(str(labels.get(name, "")) for name in by)] = 0.0 if math.isnan(value) else value
    return QueryResult(series=series)


def _short(text: str) -> str:
    return text if len(text) <= 300 else text[:297] + "..."
