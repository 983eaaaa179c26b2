"""`modeldeploy-operator`: run kopf standalone with the ModelDeployment timer, settings from env.

MODELDEPLOY_OPERATOR_* (see `settings`): which namespaces to watch (empty: all), tick period,
Prometheus URL, default server image, the /metrics + /healthz listener's address and port, and
the namespace of the leader-election Lease (`leader`; several replicas, one acts).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Mapping

import kopf
from pydantic import ValidationError

from modeldeploy_operator import handlers, metrics
from modeldeploy_operator.leader import Elector, LeaseApi
from modeldeploy_operator.settings import OperatorSettings

M_ARENA_MAX = -8  # glibc's mallopt() parameter for the number of malloc arenas
MALLOC_ARENAS = 2


def limit_malloc_arenas(env: Mapping[str, str] = os.environ, arenas: int = MALLOC_ARENAS) -> int | None:
    """Cap glibc's malloc arenas before any thread starts; the number set, or None when left alone.

    glibc gives each new thread its own arena up to 8 per core, and every arena keeps the memory its
    thread once used: with the pool of 16 API threads, 100 objects cost 245 MiB against 211 MiB with 2
    arenas (bench/README.md). A MALLOC_ARENA_MAX in the environment wins (glibc read it at start);
    another C library has no mallopt and is left as it is."""
    if "MALLOC_ARENA_MAX" in env:
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    return arenas if mallopt(M_ARENA_MAX, arenas) == 1 else None


def start_malloc_trim(period: float) -> threading.Thread | None:
    """Every `period` seconds hand the free pages of glibc's heap back to the kernel; the thread, or None.

    glibc returns freed memory only from the top of its heap: one live allocation above a freed
    region keeps the whole region resident. The operator's API responses leave such holes, so at
    1,000 objects its main arena held 265 MB with 38 MB in use, and `malloc_trim(0)` took the process
    from 523 to 313 MiB (bench/README.md). A trim with nothing to release takes ~1.5 ms, one that
    releases 140 MB ~34 ms; ctypes lets go of the GIL meanwhile. 0 (or another C library): never."""
    if period <= 0:
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]

    def run() -> None:
        while True:
            time.sleep(period)
            started = time.perf_counter()
            trim(0)
            metrics.MALLOC_TRIM_SECONDS.observe(time.perf_counter() - started)

    thread = threading.Thread(target=run, name="malloc-trim", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modeldeploy-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: MODELDEPLOY_OPERATOR_NAMESPACES, else all namespaces",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    arenas = limit_malloc_arenas()
    try:
        settings = OperatorSettings()
    except ValidationError as err:
        print(f"modeldeploy-operator: bad settings: {err}", file=sys.stderr)
        return 2
    trimming = start_malloc_trim(settings.malloc_trim_seconds)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if not args.verbose:  # "Timer 'reconcile' succeeded." every tick of every object is noise
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    namespaces = args.namespace or settings.namespace_list
    server = metrics.serve(settings.metrics_bind_address, settings.metrics_port)
    logging.getLogger("modeldeploy.operator").info(
        "metrics and health on %s:%d; watching %s; tick %.1fs; Prometheus %s; malloc arenas %s, trimmed %s",
        settings.metrics_bind_address,
        server.server_address[1],
        ",".join(namespaces) or "all namespaces",
        settings.tick_seconds,
        settings.prometheus_url,
        arenas or os.environ.get("MALLOC_ARENA_MAX", "glibc's default"),
        f"every {settings.malloc_trim_seconds:g}s" if trimming else "never",
    )
    registry = kopf.OperatorRegistry()
    leader = None
    if settings.leader_election_namespace:
        identity = settings.pod_name or f"{socket.gethostname()}-{os.getpid()}"
        leases = LeaseApi(handlers.api_client(), settings.api_timeout_seconds)
        elector = Elector(leases, settings.leader_election_namespace, identity, name=settings.lease_name)
        leader = elector.start().is_leader
    handlers.register(registry, settings, leader, namespaces)
    kopf.run(registry=registry, standalone=True, clusterwide=not namespaces, namespaces=namespaces)
    return 0


if __name__ == "__main__":
    sys.exit(main())
