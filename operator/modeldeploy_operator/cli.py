"""The `modeldeploy` command line (also the kubectl plugin `kubectl modeldeploy`).

    modeldeploy status NAME [-n NS] [--watch] [--timeout S]   rollout view; exit 0 only when Healthy
    modeldeploy history NAME [-n NS]                            revisions and their outcomes
    modeldeploy promote|abort|retry NAME [-n NS]                set modeldeploy.io/<verb> (the operator
                                                                consumes and clears it)
    modeldeploy cost NAME [-n NS]                               what a prediction costs: pods against a
                                                                managed endpoint, break-even, replicas
                                                                the observed peak needs (status.cost)
    modeldeploy undo NAME [-n NS] [--to-version V]              write a previous model back into
                                                                spec.model (users without GitOps): the
                                                                stable revision's after a rollback

Exit codes: 0 done / healthy; 1 the rollout failed (RolledBack, Aborted, Degraded, Invalid) or,
without --watch, is not healthy yet (for `cost`: no status.cost yet); 2 --watch timed out
(argparse usage errors also exit 2); 3 no such ModelDeployment, or nothing recorded to undo to;
4 no cluster reachable or no kubeconfig; 5 any other API error (for example forbidden). Errors are one line on stderr.

This module does the Kubernetes I/O (the kubernetes client, KUBECONFIG or ~/.kube/config);
rendering and the undo decision are pure, in `cli_format`. Entry point of the console scripts
`modeldeploy` and `kubectl-modeldeploy` (`main`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from modeldeploy_operator import GROUP, PLURAL, VERSION, reasons
from modeldeploy_operator.children import LABEL_NAME
from modeldeploy_operator.cli_format import (
    CliError,
    history_lines,
    parse_status,
    render_cost,
    render_status,
    revision_models,
    undo_patch,
    undo_target,
    verdict,
)

# one source for the API's names: the package (group, version, plural) and `reasons` (annotations)
ANNOTATIONS = {a.removeprefix(f"{GROUP}/"): a for a in reasons.CONTROL_ANNOTATIONS}  # promote, abort, retry
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_API = 0, 1, 2, 3, 4, 5
REQUEST_TIMEOUT = (5, 20)  # seconds: connect, read


class Cluster:
    """The few API calls the CLI makes, with failures turned into one-line CliErrors."""

    def __init__(self, kubeconfig: str | None, context: str | None, namespace: str | None) -> None:
        from kubernetes import client, config  # imported here: `--help` and the unit tests need no client

        configuration = client.Configuration()
        try:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)  # type: ignore[no-untyped-call]
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            ctx_ns = (active or {}).get("context", {}).get("namespace") if context is None else None
        except (config.ConfigException, OSError) as err:
            try:
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                ctx_ns = None
            except config.ConfigException:
                where = kubeconfig or "KUBECONFIG / ~/.kube/config"
                raise CliError(f"no usable Kubernetes configuration ({where}): {err}", EXIT_UNREACHABLE) from None
        configuration.retries = 0  # fail fast when nothing answers; one clear line beats a minute of retries
        self.server = configuration.host
        self.namespace = namespace or ctx_ns or "default"
        self.api = client.CustomObjectsApi(client.ApiClient(configuration))

    def _call(self, name: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT, **kwargs)
        except ApiException as err:
            if err.status == 404:
                raise CliError(
                    f'ModelDeployment "{name}" not found in namespace "{self.namespace}"', EXIT_NOT_FOUND
                ) from None
            reason = (err.reason or "").strip() or "error"
            raise CliError(f"Kubernetes API at {self.server}: {err.status} {reason}", EXIT_API) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            cause = getattr(err, "reason", None) or err
            raise CliError(f"cannot reach the Kubernetes API at {self.server}: {cause}", EXIT_UNREACHABLE) from None

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self._call(name, self.api.get_namespaced_custom_object)
        return obj

    def revision_deployments(self, name: str) -> list[dict[str, Any]]:
        """The Deployments of a ModelDeployment's revisions; [] when listing them is not allowed."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        apps = client.AppsV1Api(self.api.api_client)
        try:
            found = apps.list_namespaced_deployment(
                self.namespace, label_selector=f"{LABEL_NAME}={name}", _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as err:
            if err.status in (401, 403):
                return []
            raise CliError(f"Kubernetes API at {self.server}: {err.status} {err.reason}", EXIT_API) from None
        items: list[dict[str, Any]] = self.api.api_client.sanitize_for_serialization(found)["items"]
        return items

    def patch(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self._call(name, self.api.patch_namespaced_custom_object, body=body)
        return obj


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_status(cluster: Cluster, args: argparse.Namespace) -> int:
    obj = cluster.get(args.name)
    if not args.watch:
        print(render_status(obj))
        return EXIT_OK if verdict(obj) == "healthy" else EXIT_FAILED
    deadline = time.monotonic() + args.timeout
    shown = ""
    while True:
        view = render_status(obj)
        if view != shown:
            if shown:
                print(f"--- {_now()}")
            print(view, flush=True)
            shown = view
        state = verdict(obj)
        if state == "healthy":
            return EXIT_OK
        if state == "failed":
            return EXIT_FAILED
        if time.monotonic() >= deadline:
            print(f"modeldeploy: timed out after {args.timeout:g}s; the rollout is still in progress", file=sys.stderr)
            return EXIT_TIMEOUT
        time.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))
        obj = cluster.get(args.name)


def cmd_history(cluster: Cluster, args: argparse.Namespace) -> int:
    obj = cluster.get(args.name)
    print("\n".join(history_lines(parse_status(obj))))
    return EXIT_OK


def cmd_cost(cluster: Cluster, args: argparse.Namespace) -> int:
    obj = cluster.get(args.name)
    print(render_cost(obj))
    return EXIT_OK if parse_status(obj).cost is not None else EXIT_FAILED


def cmd_annotate(cluster: Cluster, args: argparse.Namespace) -> int:
    cluster.get(args.name)  # a clear "not found" before patching
    cluster.patch(args.name, {"metadata": {"annotations": {ANNOTATIONS[args.command]: _now()}}})
    print(f'modeldeployment "{args.name}" {args.command} requested ({ANNOTATIONS[args.command]})')
    return EXIT_OK


def cmd_undo(cluster: Cluster, args: argparse.Namespace) -> int:
    obj = cluster.get(args.name)
    deployments = cluster.revision_deployments(args.name)
    # by itself, undo never goes back to a rolled-back model; --to-version may name one
    target = undo_target(obj, args.to_version, revision_models(obj, deployments, skip_failed=args.to_version is None))
    cluster.patch(args.name, undo_patch(obj, target))
    was = obj.get("spec", {}).get("model", {}).get("version", "?")
    print(f'modeldeployment "{args.name}" model set back from version {was} to {target["version"]} ({target["uri"]})')
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="modeldeploy",
        description="Follow and steer canary rollouts of ModelDeployments (modeldeploy.io/v1alpha1).",
        epilog="Exit codes: 0 ok/healthy, 1 rollout failed or not healthy, 2 watch timeout, 3 not found, "
        "4 cluster unreachable, 5 other API error.",
    )
    top.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
    top.add_argument("--context", help="kubeconfig context (default: the current context)")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, fn: Callable[[Cluster, argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("name", metavar="NAME", help="the ModelDeployment")
        p.add_argument("-n", "--namespace", help="its namespace (default: the context's, else default)")
        p.set_defaults(fn=fn)
        return p

    status = command("status", "Show the rollout; exit 0 only when it ended Healthy.", cmd_status)
    status.add_argument("-w", "--watch", action="store_true", help="follow until Healthy, failed or --timeout")
    status.add_argument("--timeout", type=float, default=600.0, help="seconds --watch waits (default 600)")
    status.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    command("history", "List revisions, versions and outcomes, newest first.", cmd_history)
    command("cost", "What a prediction costs: pods against a managed endpoint, and the peak's replicas.", cmd_cost)
    command("promote", "Skip the remaining steps (or end an indefinite pause) and promote the canary.", cmd_annotate)
    command("abort", "Roll the canary back now; the stable revision keeps serving.", cmd_annotate)
    command("retry", "Try a rolled-back or aborted revision again.", cmd_annotate)
    undo = command("undo", "Write the previous model (or --to-version V) back into spec.model.", cmd_undo)
    undo.add_argument("--to-version", metavar="V", help="a recorded model version to go back to")
    text = ("Build the reference profile (spec.model.reference) from training data and the artifact; "
            "print its sha256.")  # fmt: skip
    prof = sub.add_parser("profile", help=text, description=text)
    prof.add_argument("--model-uri", required=True, help="the artifact (as spec.model.uri)")
    prof.add_argument("--sha256", help="the artifact's SHA-256 (as spec.model.sha256; required for joblib/pickle)")
    prof.add_argument("--method", default="predict", choices=("predict", "predict_proba"), help="as spec.model.method")
    prof.add_argument("--inputs", help="JSON file holding spec.inputs (default: the model's own feature names)")
    prof.add_argument("--data", required=True, help="training rows: CSV with a header, or Parquet (with pyarrow)")
    prof.add_argument("--bins", type=int, default=10, help="quantile bins per feature and prediction (2-20)")
    prof.add_argument("-o", "--output", required=True, help="where to write the profile JSON")
    prof.set_defaults(local=cmd_profile)
    return top


def cmd_profile(args: argparse.Namespace) -> int:
    """`modeldeploy profile`: needs no cluster; the artifact is loaded and verified as the server does."""
    from pydantic import ValidationError

    from modeldeploy_server.errors import LoadRefused
    from modeldeploy_server.profiling import build
    from modeldeploy_server.settings import InputSpec, Settings

    try:
        inputs = []
        if args.inputs:
            with open(args.inputs, encoding="utf-8") as handle:
                inputs = [InputSpec.model_validate(i) for i in json.load(handle)]
        settings = Settings(model_uri=args.model_uri, model_sha256=args.sha256, model_method=args.method,
                            inputs=inputs, model_name="profile")  # fmt: skip
        built = build(settings, args.data, args.bins)
        with open(args.output, "wb") as out:
            out.write(built.data)
    except (LoadRefused, ValidationError, OSError, ValueError) as err:
        raise CliError(f"profile: {err}", EXIT_FAILED) from err
    print(f"profiled {built.rows} rows ({built.dropped} refused by the input contract) into {args.output}",
          file=sys.stderr)  # fmt: skip
    print(built.sha256)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if getattr(args, "local", None) is not None:
            local: int = args.local(args)
            return local
        cluster = Cluster(args.kubeconfig, args.context, args.namespace)
        code: int = args.fn(cluster, args)
        return code
    except CliError as err:
        print(f"modeldeploy: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
