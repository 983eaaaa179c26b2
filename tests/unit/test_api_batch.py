"""spec.batch: entries parse with their contract names; bad ones are refused naming the field and value."""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy_operator.api import SpecError, parse_spec
from modeldeploy_operator.crd import build_crd
from tests.unit.test_api import GOOD, with_change

ENTRY: dict[str, Any] = {
    "name": "nightly",
    "schedule": "0 2 * * *",
    "input": {"uri": "s3://lake/wells/2026-12-01.parquet"},
    "output": {"uri": "s3://lake/scores/porosity"},
    "parallelism": 4,
    "allowRejects": True,
    "activeDeadlineSeconds": 1800,
    "suspend": False,
}


def test_a_batch_entry_parses_with_the_contract_names_and_defaults() -> None:
    spec = parse_spec(with_change("batch", [ENTRY, {**ENTRY, "name": "hourly", "schedule": "@hourly"}]))
    nightly, hourly = spec.batch
    assert (nightly.name, nightly.parallelism, nightly.allow_rejects, nightly.active_deadline_seconds) == (
        "nightly", 4, True, 1800
    )  # fmt: skip
    assert nightly.input.uri.endswith(".parquet") and nightly.output.uri == "s3://lake/scores/porosity"
    dumped = nightly.model_dump(by_alias=True)
    assert set(dumped) == {"name", "schedule", "input", "output", "parallelism", "allowRejects",
                           "activeDeadlineSeconds", "suspend"}  # fmt: skip
    minimal = parse_spec(with_change("batch", [{k: ENTRY[k] for k in ("name", "schedule", "input", "output")}]))
    assert minimal.batch[0].parallelism == 1 and not minimal.batch[0].allow_rejects and not minimal.batch[0].suspend
    assert hourly.schedule == "@hourly"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"schedule": "every night"}, "spec.batch[0].schedule: schedule 'every night' is not a cron schedule"),
        ({"schedule": "0 2 * *"}, "5 fields (minute hour day-of-month month day-of-week)"),
        ({"output": {"uri": "file:///data/out"}}, "spec.batch[0].output.uri: uri 'file:///data/out': batch output"),
        ({"input": {"uri": "ftp://x/y.csv"}}, "spec.batch[0].input.uri: uri 'ftp://x/y.csv': batch input must be"),
        ({"parallelism": 0}, "spec.batch[0].parallelism: Input should be greater than or equal to 1 (got 0)"),
        ({"name": "Nightly"}, "spec.batch[0].name: String should match pattern"),
        ({"activeDeadlineSeconds": 0}, "spec.batch[0].activeDeadlineSeconds: Input should be greater than 0"),
        ({"paralelism": 2}, "spec.batch[0].paralelism: Extra inputs are not permitted"),
    ],
)
def test_a_bad_batch_entry_is_refused_naming_the_field(change: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(with_change("batch", [{**ENTRY, **change}]))
    assert expected in str(err.value)


def test_batch_names_are_unique() -> None:
    with pytest.raises(SpecError, match=r"spec.batch: Value error, batch name 'nightly' at index 1 is a duplicate|"
                       r"batch name 'nightly' at index 1 is a duplicate"):  # fmt: skip
        parse_spec(with_change("batch", [ENTRY, ENTRY]))


def test_the_crd_enforces_the_batch_rules_too() -> None:
    props = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    batch = props["batch"]
    assert batch["x-kubernetes-list-type"] == "map" and batch["x-kubernetes-list-map-keys"] == ["name"]
    entry = batch["items"]
    assert set(entry["required"]) == {"name", "schedule", "input", "output"}
    assert entry["properties"]["output"]["properties"]["uri"]["pattern"].startswith("^s3://")
    assert entry["properties"]["parallelism"]["minimum"] == 1 and entry["properties"]["parallelism"]["maximum"] == 100
    assert GOOD.get("batch") is None  # the shared example stays without batch
