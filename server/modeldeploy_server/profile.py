"""The reference profile: what the training data looked like, for the judge's drift and shift checks.

Owned here: the profile's JSON format (`spec.model.reference`, digest-verified like the artifact),
parsing it with a clear error per field, and building it (`build`) from training rows and the
model's own predictions on them (`modeldeploy profile`). Called by `runtime` (the server loads the
profile it is given, verified, for its bins), `binning` and the operator's CLI.

Format (version 1), one JSON object:

    {"format": "modeldeploy-reference-profile", "version": 1, "rows": 1000,
     "features": [{"name": "x0", "edges": [e1, ..., e(k-1)], "proportions": [p1, ..., pk]}, ...],
     "prediction": {"kind": "class", "classes": ["a", "b"], "proportions": [0.5, 0.5]}
                or {"kind": "bin", "edges": [...], "proportions": [...]}}

`edges` are the inner bin edges (strictly increasing, finite); bin i holds values v with
edges[i-1] <= v < edges[i] (the first and last bins are open-ended), so k - 1 edges make k bins and
every finite value has a bin. Bins are training quantiles (deciles by default; ties merged), so
each holds about the same share of the training rows and a shift of a feature moves mass between
neighbours. Proportions are the training shares per bin (summing to 1).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

FORMAT = "modeldeploy-reference-profile"
VERSION = 1
DEFAULT_BINS = 10
MAX_BINS = 20  # per feature and for predictions: features x bins is capped by `binning.MAX_INPUT_SERIES`
MAX_CLASSES = 100


class ProfileError(ValueError):
    """A profile that cannot be used: names the field, the value and the reason."""


@dataclass(frozen=True)
class Binned:
    """Ordered bins: `edges` (k - 1 inner edges) and the reference share of each of the k bins."""

    edges: tuple[float, ...]
    proportions: tuple[float, ...]

    @property
    def bins(self) -> int:
        return len(self.edges) + 1


@dataclass(frozen=True)
class Profile:
    rows: int
    features: dict[str, Binned]
    classes: tuple[str, ...] | None  # prediction kind "class": the class labels (as strings)
    class_proportions: tuple[float, ...] | None
    prediction_bins: Binned | None  # prediction kind "bin": probability scores or regressor values


def _where(field: str, value: Any, reason: str) -> ProfileError:
    text = repr(value)
    return ProfileError(f"reference profile: {field} = {text[:80]}{'...' if len(text) > 80 else ''}: {reason}")


def _numbers(field: str, value: Any) -> list[float]:
    if not isinstance(value, list) or not all(type(v) in (int, float) for v in value):
        raise _where(field, value, "must be a list of numbers")
    out = [float(v) for v in value]
    if not all(math.isfinite(v) for v in out):
        raise _where(field, value, "must be finite")
    return out


def _binned(field: str, raw: Any) -> Binned:
    if not isinstance(raw, dict):
        raise _where(field, raw, "must be an object with edges and proportions")
    edges = _numbers(f"{field}.edges", raw.get("edges"))
    props = _numbers(f"{field}.proportions", raw.get("proportions"))
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise _where(f"{field}.edges", edges, "must be strictly increasing")
    if not 1 <= len(edges) <= MAX_BINS - 1:
        raise _where(f"{field}.edges", edges, f"must hold 1 to {MAX_BINS - 1} inner edges (2 to {MAX_BINS} bins)")
    _proportions(f"{field}.proportions", props, len(edges) + 1)
    return Binned(tuple(edges), tuple(props))


def _proportions(field: str, props: list[float], expected: int) -> None:
    if len(props) != expected:
        raise _where(field, props, f"must hold {expected} values, one per bin or class")
    if any(p < 0 for p in props) or not math.isclose(sum(props), 1.0, abs_tol=1e-6):
        raise _where(field, props, "must be non-negative and sum to 1")


def parse(data: bytes) -> Profile:
    """The profile in `data`; ProfileError naming the field when it is not one."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProfileError(f"reference profile is not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise _where("format", raw.get("format") if isinstance(raw, dict) else raw, f"must be {FORMAT!r}")
    if raw.get("version") != VERSION:
        raise _where("version", raw.get("version"), f"this server reads version {VERSION}")
    rows = raw.get("rows")
    if type(rows) is not int or rows < 1:
        raise _where("rows", rows, "must be a positive integer (training rows profiled)")
    features: dict[str, Binned] = {}
    raw_features = raw.get("features")
    if not isinstance(raw_features, list):
        raise _where("features", raw_features, "must be a list")
    for i, feature in enumerate(raw_features):
        name = feature.get("name") if isinstance(feature, dict) else None
        if not isinstance(name, str) or not name or name in features:
            raise _where(f"features[{i}].name", name, "must be a non-empty string, unique")
        features[name] = _binned(f"features[{i}]", feature)
    prediction = raw.get("prediction")
    classes = class_props = None
    pred_bins = None
    if prediction is not None:
        kind = prediction.get("kind") if isinstance(prediction, dict) else None
        if kind == "class":
            labels = prediction.get("classes")
            if not isinstance(labels, list) or not all(isinstance(c, str) for c in labels) or len(set(labels)) < 2:
                raise _where("prediction.classes", labels, "must be at least two distinct strings")
            if len(labels) > MAX_CLASSES:
                raise _where("prediction.classes", labels, f"at most {MAX_CLASSES} classes")
            props = _numbers("prediction.proportions", prediction.get("proportions"))
            _proportions("prediction.proportions", props, len(labels))
            classes, class_props = tuple(labels), tuple(props)
        elif kind == "bin":
            pred_bins = _binned("prediction", prediction)
        else:
            raise _where("prediction.kind", kind, "must be 'class' or 'bin'")
    return Profile(rows, features, classes, class_props, pred_bins)


# ------------------------------------------------------------------------------------------------
# Building a profile
# ------------------------------------------------------------------------------------------------


def quantile_binned(values: npt.NDArray[np.float64], bins: int = DEFAULT_BINS) -> Binned | None:
    """Inner edges at the training quantiles (ties merged) and the training share per bin; None
    when the values take a single value (nothing to bin)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return None
    edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = edges[edges > v.min()]  # an edge at the minimum would leave the first bin empty
    if edges.size == 0:
        return None
    counts = np.bincount(np.searchsorted(edges, v, side="right"), minlength=edges.size + 1)
    return Binned(tuple(float(e) for e in edges), tuple(float(c) for c in counts / v.size))


def build(
    x: npt.NDArray[np.float64], names: Sequence[str], y: npt.NDArray[Any], classes: Sequence[str] | None,
    bins: int = DEFAULT_BINS,
) -> dict[str, Any]:  # fmt: skip
    """The profile (as JSON-ready data) of training rows `x` (columns `names`) and the model's
    answers `y` on them: class labels (`classes` given), probabilities (2-D: the positive class's
    score when binary, the arg-max class otherwise) or regression values."""
    if not 2 <= bins <= MAX_BINS:
        raise ProfileError(f"bins = {bins}: must be within [2, {MAX_BINS}]")
    features = []
    for j, name in enumerate(names):
        b = quantile_binned(x[:, j], bins)
        if b is not None:
            features.append({"name": name, "edges": list(b.edges), "proportions": list(b.proportions)})
    prediction: dict[str, Any] | None = None
    y = np.asarray(y)
    if classes is not None and y.ndim == 2 and y.shape[1] == len(classes) and len(classes) > 2:
        # multiclass probabilities: the arg-max class
        labels = np.asarray(classes)[np.argmax(y, axis=1)]
        prediction = _class_prediction(labels, classes)
    elif y.ndim == 2 and y.shape[1] == 2:
        b = quantile_binned(y[:, 1].astype(np.float64), bins)
        prediction = None if b is None else {"kind": "bin", "edges": list(b.edges), "proportions": list(b.proportions)}
    elif classes is not None:
        prediction = _class_prediction(np.asarray([str(v) for v in y.reshape(-1)]), classes)
    elif y.dtype.kind == "f":
        b = quantile_binned(y.reshape(len(y), -1)[:, 0].astype(np.float64), bins)
        prediction = None if b is None else {"kind": "bin", "edges": list(b.edges), "proportions": list(b.proportions)}
    out: dict[str, Any] = {"format": FORMAT, "version": VERSION, "rows": int(len(x)), "features": features}
    if prediction is not None:
        out["prediction"] = prediction
    return out


def _class_prediction(labels: npt.NDArray[Any], classes: Sequence[str]) -> dict[str, Any]:
    if len(classes) > MAX_CLASSES:
        raise ProfileError(f"the model has {len(classes)} classes: at most {MAX_CLASSES} are profiled")
    index = {c: i for i, c in enumerate(classes)}
    seen, n = np.unique(labels.astype(str), return_counts=True)
    counts = np.zeros(len(classes))
    for label, k in zip(seen.tolist(), n.tolist(), strict=True):
        counts[index[label]] += k
    return {"kind": "class", "classes": list(classes), "proportions": [float(c) for c in counts / max(1, len(labels))]}


def dumps(profile: dict[str, Any]) -> bytes:
    """Canonical bytes (sorted keys), so the same data gives the same digest."""
    return orjson.dumps(profile, option=orjson.OPT_SORT_KEYS)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
