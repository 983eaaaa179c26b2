"""The replica arithmetic, table-tested with the worked examples of its docstring."""

from __future__ import annotations

import pytest

from modeldeploy_operator.ratio import replica_ratio, routed_canary_replicas, unrouted_canary


@pytest.mark.parametrize(
    ("stable", "weight", "canary", "share"),
    [
        (9, 10, 1, 10),
        (10, 10, 1, 9),
        (2, 10, 1, 33),
        (4, 25, 1, 20),
        (3, 50, 3, 50),
        (2, 75, 2, 50),
        (5, 0, 0, 0),
        (5, 100, 5, 50),  # r beside r is half the pods, not 100% (issue 11 L12)
        (1, 1, 1, 50),
        (100, 1, 1, 1),
        (99, 50, 99, 50),
        (4, 20, 1, 20),
        (8, 20, 2, 20),
    ],
)
def test_replica_ratio_table(stable: int, weight: int, canary: int, share: int) -> None:
    assert replica_ratio(stable, weight) == (canary, share)


@pytest.mark.parametrize(
    ("replicas", "weight", "canary"), [(2, 10, 1), (10, 25, 3), (10, 50, 5), (3, 100, 3), (5, 0, 1)]
)
def test_routed_canary_replicas_table(replicas: int, weight: int, canary: int) -> None:
    assert routed_canary_replicas(replicas, weight) == canary


@pytest.mark.parametrize(
    ("stable", "weight", "canary", "share"),
    [(5, 0, 1, 17), (2, 0, 1, 33), (1, 0, 1, 50), (3, 50, 3, 50), (9, 10, 1, 10)],
)
def test_an_unrouted_canary_without_weight_still_runs_one_pod(
    stable: int, weight: int, canary: int, share: int
) -> None:
    assert unrouted_canary(stable, weight) == (canary, share)


@pytest.mark.parametrize(
    ("stable", "weight", "message"),
    [(0, 10, "stable_replicas must be at least 1 (got 0)"), (3, 101, "weight must be within 0..100 (got 101)")],
)
def test_bad_arguments_are_named(stable: int, weight: int, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        replica_ratio(stable, weight)


def test_the_share_never_overshoots_much_and_the_canary_is_never_empty() -> None:
    for stable in range(1, 40):
        for weight in range(1, 100):
            canary, share = replica_ratio(stable, weight)
            assert 1 <= canary <= stable
            assert (
                share == round(100 * canary / (canary + stable) + 1e-9)
                or abs(share - 100 * canary / (canary + stable)) <= 0.5
            )
            if canary > 1:  # one pod fewer would have been further from the asked weight, or equally far
                lower = 100 * (canary - 1) / (canary - 1 + stable)
                assert abs(lower - weight) >= abs(100 * canary / (canary + stable) - weight) - 1e-9
