"""Replica arithmetic for canaries: pure functions with worked examples, table-tested.

Called by `core.decide` to size the canary Deployment for a step's weight.

Replica-ratio canary (no traffic router): the `<name>` Service selects every revision, so each
ready pod gets about the same share of requests. The **stable revision is never touched** while a
canary runs (rollback is then only "scale the canary to 0", never "scale stable back up and
wait"), so the canary's share is c / (c + r) for c canary pods beside r stable pods. The canary
count is the whole number of pods closest to the requested weight w (percent), at least 1 (a
canary must be observable) and at most r:

    c = clamp(round_half_up(r * w / (100 - w)), 1, r)        for 0 < w < 100

Worked examples (r stable replicas, w requested weight -> c canary pods, effective share):

    r=9,  w=10  -> c=1   (1/10  = 10%)
    r=10, w=10  -> c=1   (1/11  =  9%; 1.11 rounds to 1)
    r=2,  w=10  -> c=1   (1/3   = 33%; never 0 pods while the canary carries weight)
    r=4,  w=25  -> c=1   (1/5   = 20%; 1.33 rounds to 1)
    r=3,  w=50  -> c=3   (3/6   = 50%)
    r=2,  w=75  -> c=2   (2/4   = 50%; capped at r)
    r=5,  w=0   -> c=0   (0%; but a canary that carries no weight yet still gets one pod, to see
                          it ready: `unrouted_canary` gives it 1 pod, 1/(r+1) of the traffic)
    r=5,  w=100 -> c=5   (5/10 = 50%: the promotion size; 100% only once the stable Service
                          switches to the canary, so the share reported before that is 50%)

With a traffic router (Gateway API weights) the share is set by the route, and the canary only
needs enough pods for its share of the load: c = clamp(ceil(r * w / 100), 1, r) for w > 0:

    r=2, w=10 -> 1;  r=10, w=25 -> 3;  r=10, w=50 -> 5;  r=3, w=100 -> 3
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal


def _check(stable_replicas: int, weight: int) -> None:
    if stable_replicas < 1:
        raise ValueError(f"stable_replicas must be at least 1 (got {stable_replicas})")
    _check_weight(weight)


def _check_weight(weight: int) -> None:
    if not 0 <= weight <= 100:
        raise ValueError(f"weight must be within 0..100 (got {weight})")


def _share(canary: int, stable_replicas: int) -> int:
    """The canary's share of a Service over both revisions' ready pods, in whole percent (half up)."""
    share = Decimal(100 * canary) / Decimal(canary + stable_replicas)
    return int(share.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def replica_ratio(stable_replicas: int, weight: int) -> tuple[int, int]:
    """(canary pods, effective canary share in whole percent) beside `stable_replicas` untouched pods."""
    _check(stable_replicas, weight)
    if weight == 0:
        return 0, 0
    if weight == 100:
        return stable_replicas, 50  # r beside r: half, whatever was asked (L12)
    exact = Decimal(stable_replicas * weight) / Decimal(100 - weight)
    canary = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    canary = min(max(canary, 1), stable_replicas)
    return canary, _share(canary, stable_replicas)


def unrouted_canary(stable_replicas: int, weight: int) -> tuple[int, int]:
    """(canary pods, effective share) without a traffic router: `replica_ratio`, except that a
    canary asked to carry no weight yet still runs one pod, so that it can be seen ready before
    its first step; beside r stable pods that one pod gets 1/(r+1) of the traffic (rounded), since
    the Service `<name>` selects every ready pod."""
    if weight == 0:
        _check(stable_replicas, weight)
        return 1, _share(1, stable_replicas)
    return replica_ratio(stable_replicas, weight)


def routed_canary_replicas(replicas: int, weight: int) -> int:
    """Canary pods needed to carry `weight` percent of the load of `replicas` pods behind a router."""
    _check_weight(weight)
    if weight == 0:
        return 1  # kept warm and observable while the route gives it nothing
    return min(max(math.ceil(replicas * weight / 100), 1), replicas)
