"""`modeldeploy-server`: serve from the environment (flags override), or `score` a file or a run's shard.

Owned here: the command line. Every setting is a flag named after its variable
(`--model-uri` = `MODELDEPLOY_MODEL_URI`); flags are exported to the environment so that worker
processes see them. One worker: the model loads in the background of the serving process (liveness
answers during a download). Several workers: the parent fetches, verifies and self-checks once
(refusing early with one line), sets up prometheus_client's multiprocess directory, then uvicorn
spawns the workers. Exit codes: 0 clean stop, 2 refusal (digest, format, version, self-check,
settings, input, output), 1 rejected rows in `score`, 3 an unexpected error in a shard.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_settings import SettingsError

from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.settings import ENV_PREFIX, Settings


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = (field.description or "") + f" (env {ENV_PREFIX}{name.upper()})"
        parser.add_argument(flag, dest=f"setting_{name}", default=None, metavar="VALUE", help=help_text)


def _export_flags(args: argparse.Namespace) -> None:
    for name in Settings.model_fields:
        value = getattr(args, f"setting_{name}", None)
        if value is not None:
            os.environ[f"{ENV_PREFIX}{name.upper()}"] = value


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ENV_PREFIX + ".".join(str(p) for p in first["loc"]).upper()
        raise LoadRefused(f"invalid setting {where}: {first['msg']} (got {str(first.get('input'))[:200]!r})") from None
    except SettingsError as exc:  # a complex setting (MODELDEPLOY_INPUTS) that is not JSON
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        raise LoadRefused(f"invalid setting {ENV_PREFIX}{field.upper()}: not valid JSON") from None


def _fresh_multiprocess_dir() -> str:
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)
    else:
        directory = tempfile.mkdtemp(prefix="modeldeploy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    return directory


def serve(settings: Settings) -> int:
    import uvicorn

    from modeldeploy_server.transport import HalfCloseProtocol, Server

    common: dict[str, object] = {
        "host": settings.host, "port": settings.port, "loop": "uvloop", "http": HalfCloseProtocol, "lifespan": "on",
        "access_log": False, "log_config": None, "timeout_graceful_shutdown": settings.graceful_timeout_seconds,
        "timeout_keep_alive": settings.keep_alive_seconds, "server_header": False, "date_header": False,
    }  # fmt: skip
    if settings.workers > 1:
        directory = _fresh_multiprocess_dir()  # before prometheus_client is imported anywhere
        from modeldeploy_server import logs
        from modeldeploy_server.runtime import load_runtime

        logs.configure(settings.log_level)
        load_runtime(settings)  # refuse once, early, with one line; workers reuse the verified cache
        try:
            uvicorn.run("modeldeploy_server.app:create_worker_app", factory=True, workers=settings.workers, **common)  # type: ignore[arg-type]
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        return 0
    from modeldeploy_server.app import create_app

    app = create_app(settings)
    server = Server(uvicorn.Config(app, **common))  # type: ignore[arg-type]

    def stop(_: str) -> None:
        server.should_exit = True

    app.loader.on_refused = stop
    server.run()
    if app.loader.refused:
        raise LoadRefused(app.loader.refused)
    return 0


def _score_shard(settings: Settings, args: argparse.Namespace) -> int:
    index = args.shard if args.shard is not None else os.environ.get("JOB_COMPLETION_INDEX")
    run = args.run_id or os.environ.get("MODELDEPLOY_BATCH_RUN")
    if args.shards < 1:
        raise LoadRefused(f"--shards must be at least 1 (got {args.shards})")
    if index is None or not str(index).isdigit():
        raise LoadRefused(f"--shard (or JOB_COMPLETION_INDEX) must be a shard index, got {index!r}")
    if not run:
        raise LoadRefused("--run-id (or MODELDEPLOY_BATCH_RUN) is required with --shards: it names the run's folder")
    attempt = os.environ.get("MODELDEPLOY_BATCH_ATTEMPT", "")  # the Job's uid (the operator's CronJob sets it)
    from modeldeploy_server.score import Shard, score_shard  # scikit-learn and SciPy: after the arguments are checked

    shard = Shard(args.input, args.output, int(index), args.shards, run, args.allow_rejects, attempt=attempt)
    return score_shard(settings, shard)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="modeldeploy-server", description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="Serve the model over HTTP (the default).")
    score_parser = sub.add_parser("score", help="Score a CSV file with the same artifact checks and contract.")
    score_parser.add_argument(
        "--input", required=True, help="CSV (a header row names the features) or Parquet; a URI with --shards."
    )
    score_parser.add_argument(
        "--output", required=True, help="Predictions (row, carried columns, prediction...); a prefix with --shards."
    )
    score_parser.add_argument("--rejects", default=None, help="CSV report of rejected rows (default: stderr).")
    score_parser.add_argument("--allow-rejects", action="store_true", help="Exit 0 even if rows were rejected.")
    score_parser.add_argument("--shards", type=int, default=None, help="Score one shard of a run of this many.")
    score_parser.add_argument(
        "--shard", type=int, default=None, help="This shard's index (default: env JOB_COMPLETION_INDEX)."
    )
    score_parser.add_argument(
        "--run-id", default=None, help="The run's folder under the output (default: env MODELDEPLOY_BATCH_RUN)."
    )
    for p in (parser, serve_parser, score_parser):
        _add_setting_flags(p)
    if not args_list or args_list[0] not in ("serve", "score", "-h", "--help"):
        args_list.insert(0, "serve")
    args = parser.parse_args(args_list)
    _export_flags(args)
    try:
        settings = _settings()
        if args.command == "score" and args.shards is not None:
            return _score_shard(settings, args)
        if args.command == "score":
            from modeldeploy_server.score import score

            return score(settings, args.input, args.output, args.rejects, args.allow_rejects)
        return serve(settings)
    except LoadRefused as exc:
        print(f"modeldeploy-server: refused: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
