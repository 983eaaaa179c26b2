"""The model runtime: deserialize a verified artifact, check it against the contract, self-check.

Owned here: format dispatch (joblib/pickle only with a digest, skops only within the trust policy of
`trust`, ONNX via onnxruntime), sklearn's InconsistentVersionWarning as a refusal, the reference
`predict` (the artifact's own method), the choice of a verified fast path (`fastpath`), and the
self-check on the reference row that gates readiness. Called by `app` (serving) and `score`.
"""

from __future__ import annotations

import logging
import pickle
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
from sklearn.exceptions import InconsistentVersionWarning

from modeldeploy_server import onnx_session
from modeldeploy_server.candidates import Predict
from modeldeploy_server.contract import Contract
from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.fastpath import REFERENCE, choose
from modeldeploy_server.fetch import discard, fetch_verified
from modeldeploy_server.profile import Profile, ProfileError, parse
from modeldeploy_server.settings import InputSpec, Settings
from modeldeploy_server.trust import check_trees, skops_trusted

log = logging.getLogger("modeldeploy_server.runtime")
__all__ = ["Predict", "Runtime", "load_runtime", "self_check"]


@dataclass
class Runtime:
    """A loaded, verified model: `predict` is the serving path, `reference` the artifact's own method."""

    contract: Contract
    predict: Predict
    reference: Predict
    sha256: str
    format: str
    method: str
    path: str = REFERENCE
    notes: list[str] = field(default_factory=list)
    classes: list[str] | None = None
    load_seconds: float = 0.0
    model: Any = None  # the deserialized sklearn object (None for ONNX artifacts)
    compiled: bool = False  # the fast-path choice has run
    profile: Profile | None = None  # the verified reference profile (MODELDEPLOY_REFERENCE_URI)

    def compile(self, settings: Settings) -> None:
        """Choose the serving path (see `fastpath.choose`); a no-op once done or when switched off."""
        if not self.compiled and self.model is not None and settings.compile == "auto":
            choice = choose(self.reference, self.model, self.contract, self.method)
            self.predict, self.path = choice.predict, choice.path
            self.notes.extend(choice.notes)
            self_check(self)
        self.compiled = True

    def fall_back(self) -> None:
        """Serve the artifact's own method (after a failed compilation); the choice counts as made."""
        self.predict, self.path, self.compiled = self.reference, REFERENCE, True


def _refuse_version_mismatch(caught: list[warnings.WarningMessage], settings: Settings) -> None:
    """sklearn's InconsistentVersionWarning, recorded while loading, is a refusal unless overridden."""
    for warning in caught:
        if isinstance(warning.message, InconsistentVersionWarning):
            w = warning.message
            line = (
                f"model artifact {settings.model_uri} was saved with scikit-learn {w.original_sklearn_version}"
                f" but this server runs {w.current_sklearn_version} ({w.estimator_name})"
            )
            if not settings.allow_version_mismatch:
                raise LoadRefused(line + "; refusing to load (MODELDEPLOY_ALLOW_VERSION_MISMATCH=true overrides)")
            log.warning("%s; loading anyway because MODELDEPLOY_ALLOW_VERSION_MISMATCH=true", line)


def _unpickle(path: Path, fmt: str, settings: Settings) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        if fmt == "joblib":
            import joblib

            model = joblib.load(path)
        else:
            with path.open("rb") as handle:
                model = pickle.load(handle)  # noqa: S301 - digest verified before this line
    _refuse_version_mismatch(caught, settings)
    return model


def _load_skops(path: Path, settings: Settings) -> Any:
    """Load a skops file whose every type passed the trust policy (`trust`), once, then check its trees."""
    import skops.io as sio

    trusted = skops_trusted(path, settings.model_uri, settings.trusted_types, settings.max_artifact_bytes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InconsistentVersionWarning)
        model = sio.load(path, trusted=trusted)
    _refuse_version_mismatch(caught, settings)
    check_trees(model, settings.model_uri)
    return model


def _sklearn_predict(model: Any, method: str, settings: Settings) -> Predict:
    if not callable(getattr(model, method, None)):
        raise LoadRefused(f"model {type(model).__name__} from {settings.model_uri} has no method {method!r}")
    bound: Predict = getattr(model, method)
    return bound


def _contract_for(model: Any, specs: list[InputSpec], settings: Settings) -> Contract:
    names = getattr(model, "feature_names_in_", None)
    width = getattr(model, "n_features_in_", None)
    if not specs:
        if names is not None:
            specs = [InputSpec(name=str(n)) for n in names]
        elif width is not None:
            specs = [InputSpec(name=f"x{j}") for j in range(int(width))]
        else:
            raise LoadRefused(f"MODELDEPLOY_INPUTS is empty and {settings.model_uri} does not say its features")
    if width is not None and int(width) != len(specs):
        raise LoadRefused(f"MODELDEPLOY_INPUTS declares {len(specs)} features but the model expects {int(width)}")
    if names is not None and [str(n) for n in names] != [s.name for s in specs]:
        raise LoadRefused(
            f"MODELDEPLOY_INPUTS names {[s.name for s in specs]} differ from the model's "
            f"feature_names_in_ {[str(n) for n in names]}"
        )
    return Contract(specs)


def _load_onnx(path: Path, settings: Settings, digest: str) -> Runtime:
    """An ONNX artifact: onnxruntime is both the reference and the serving path."""
    session = onnx_session.open_artifact(path.read_bytes(), settings.model_uri)
    shape = session.get_inputs()[0].shape
    width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
    specs = list(settings.inputs) or [InputSpec(name=f"x{j}") for j in range(width or 0)]
    if not specs:
        raise LoadRefused(f"MODELDEPLOY_INPUTS is empty and {settings.model_uri} does not fix its input width")
    if width is not None and width != len(specs):
        raise LoadRefused(f"MODELDEPLOY_INPUTS declares {len(specs)} features but the ONNX model expects {width}")
    predict = onnx_session.predict_fn(session, settings.model_method)
    return Runtime(Contract(specs), predict, predict, digest, "onnx", settings.model_method, path="onnx")


def self_check(runtime: Runtime) -> None:
    """Predict the reference row (and, with optional features, the row without them); refuse on failure."""
    rows = [runtime.contract.reference_row()]
    if runtime.contract.any_optional:
        missing = rows[0].copy()
        missing[0, runtime.contract.optional] = np.nan
        rows.append(missing)
    for x in rows:
        try:
            y = runtime.predict(x)
        except Exception as exc:  # the model's own error, whatever its type, refuses readiness
            raise LoadRefused(f"self-check prediction on {x.tolist()} failed: {type(exc).__name__}: {exc}") from exc
        if len(y) != 1:
            raise LoadRefused(f"self-check prediction on {x.tolist()} returned {len(y)} rows instead of 1")


def _load_sklearn(path: Path, fmt: str, settings: Settings, digest: str) -> Runtime:
    try:
        model = _load_skops(path, settings) if fmt == "skops" else _unpickle(path, fmt, settings)
    except LoadRefused:
        raise
    except Exception as exc:  # any deserialization failure is a refusal with one line
        raise LoadRefused(f"cannot load {fmt} artifact {settings.model_uri}: {type(exc).__name__}: {exc}") from exc
    contract = _contract_for(model, list(settings.inputs), settings)
    reference = _sklearn_predict(model, settings.model_method, settings)
    runtime = Runtime(contract, reference, reference, digest, fmt, settings.model_method, model=model)
    if hasattr(model, "classes_"):
        runtime.classes = [str(c) for c in model.classes_]
    self_check(runtime)
    return runtime


def load_profile(settings: Settings, runtime: Runtime) -> Profile | None:
    """The reference profile, fetched and digest-verified like the artifact, checked against the model."""
    if not settings.reference_uri:
        return None
    if settings.reference_sha256 is None:
        raise LoadRefused(f"refusing reference profile {settings.reference_uri} without MODELDEPLOY_REFERENCE_SHA256")
    where = settings.model_copy(update={"model_uri": settings.reference_uri, "model_sha256": settings.reference_sha256})
    path, _ = fetch_verified(where)
    try:
        profile = parse(path.read_bytes())
    except ProfileError as exc:
        discard(path)
        raise LoadRefused(f"{settings.reference_uri}: {exc}") from exc
    unknown = sorted(set(profile.features) - set(runtime.contract.names))
    if unknown:
        raise LoadRefused(f"reference profile {settings.reference_uri} profiles feature(s) {unknown} the model does "
                          f"not take (inputs: {list(runtime.contract.names)})")  # fmt: skip
    if profile.classes is not None and runtime.classes is not None and list(profile.classes) != runtime.classes:
        raise LoadRefused(f"reference profile {settings.reference_uri} has classes {list(profile.classes)}, the model "
                          f"{runtime.classes}")  # fmt: skip
    return profile


def load_runtime(settings: Settings, compile_now: bool = True) -> Runtime:
    """Fetch, verify, deserialize, self-check and (unless deferred) choose the serving path. Raises LoadRefused.

    The server defers the choice (`compile_now=False`): it turns ready on the artifact's own method
    and switches to a verified fast path in the background, so compiling never delays readiness.
    """
    started = time.perf_counter()
    fmt = settings.effective_format
    if fmt is None:
        raise LoadRefused(f"MODELDEPLOY_MODEL_FORMAT is not set and {settings.model_uri!r} has no known extension")
    if fmt in ("joblib", "pickle") and settings.model_sha256 is None:
        raise LoadRefused(
            f"refusing {fmt} artifact {settings.model_uri} without MODELDEPLOY_MODEL_SHA256: it runs code when loaded"
        )
    path, digest = fetch_verified(settings)
    try:
        runtime = _load_onnx(path, settings, digest) if fmt == "onnx" else _load_sklearn(path, fmt, settings, digest)
        if compile_now:
            runtime.compile(settings)
        self_check(runtime)
        runtime.profile = load_profile(settings, runtime)
    except BaseException:
        discard(path)  # verified bytes that cannot be served must not stay in the cache
        raise
    runtime.load_seconds = time.perf_counter() - started
    log.info(
        "model loaded",
        extra={"fields": {"uri": settings.model_uri, "sha256": digest, "format": fmt, "path": runtime.path,
                          "notes": runtime.notes, "sklearn_version": sklearn.__version__,
                          "load_seconds": round(runtime.load_seconds, 3)}},
    )  # fmt: skip
    return runtime
