"""`python -m devcluster up|down|status|run|prometheus-*|metrics-server-*`: the local cluster from the shell.

Owns: the CLI used by `make cluster-up` / `make cluster-down`. `up` starts the harness detached
(the shell gets its prompt back once everything is ready) and prints the env file; `up
--metrics-server` also serves the resource metrics API (`kubectl top`, the HPA), which is
otherwise started on demand; `down` stops it by pid file; `run` is the harness itself in the
foreground (devcluster.realnode).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from devcluster.client import DEFAULT_STATE, Cluster, ClusterError, stop_by_pid_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    commands = ["up", "down", "status", "run", "prometheus-stop", "prometheus-start", "metrics-server-start",
                "metrics-server-stop"]  # fmt: skip
    parser.add_argument("command", choices=commands)
    parser.add_argument("--metrics-server", action="store_true", help="up: also start metrics-server")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="state folder (default .cache/cluster)")
    parser.add_argument("--parent-pid", type=int, default=None, help="run: stop when this parent exits")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    state: Path = args.state.resolve()
    try:
        if args.command == "run":
            from devcluster import realnode

            return realnode.main(state, args.parent_pid)
        if args.command == "up":
            try:
                cluster = Cluster.attach(state)  # idempotent: an already running cluster is fine
                print("# already running", file=sys.stderr)
            except ClusterError:
                cluster = Cluster.start(state, timeout=args.timeout, detach=True)
            if args.metrics_server:
                cluster.start_metrics_server()
            print((state / "env").read_text(), end="")
            print(
                f"# ready in {cluster.timings.get('all_ready', 0):.1f}s; `set -a; . {state / 'env'}; set +a`",
                file=sys.stderr,
            )
            return 0
        if args.command == "down":
            print("stopped" if stop_by_pid_file(state) else "no cluster was running", file=sys.stderr)
            return 0
        cluster = Cluster.attach(state)
        if args.command == "status":
            print(json.dumps(cluster.status(), indent=2))
        elif args.command == "prometheus-stop":
            cluster.stop_prometheus()
        elif args.command == "prometheus-start":
            cluster.start_prometheus()
        elif args.command == "metrics-server-start":
            cluster.start_metrics_server()
        else:
            cluster.stop_metrics_server()
        return 0
    except ClusterError as e:
        print(f"devcluster: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
