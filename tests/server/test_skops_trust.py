"""The skops trust policy: no code from a skops file ever runs; legitimate models still load.

Each hostile file (tests/server/skops_payloads.py) would write a marker file if skops built it
(they all do when every type they contain is trusted, which the old prefix rule did for most). The
server must refuse each one before loading, naming the type, and the marker must not appear.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
    RandomForestRegressor,
    VotingClassifier,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC

from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.runtime import load_runtime
from modeldeploy_server.settings import Settings
from modeldeploy_server.trust import operator_types
from tests.server import skops_payloads
from tests.server.conftest import run_cli


def _settings(path: Path, cache: Path, **extra: Any) -> Settings:
    return Settings(model_uri=path.as_uri(), cache_dir=cache, **extra)


@pytest.mark.parametrize("name", list(skops_payloads.PAYLOADS))
def test_hostile_skops_file_is_refused_naming_the_type_and_runs_nothing(name: str, tmp_path: Path) -> None:
    build, named = skops_payloads.PAYLOADS[name]
    marker = tmp_path / "markers" / "pwned"
    marker.parent.mkdir()
    path = skops_payloads.write(tmp_path / "evil.skops", build(marker))
    with pytest.raises(LoadRefused) as refused:
        load_runtime(_settings(path, tmp_path / "cache"))
    message = str(refused.value)
    assert "contains untrusted types" in message and repr(named) in message, message
    assert "\n" not in message
    assert not list(marker.parent.iterdir()), f"payload {name!r} ran: {marker.read_text()}"


def test_the_refusal_exits_2_with_one_line_from_the_real_server(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    build, named = skops_payloads.PAYLOADS["numpy.testing.runstring"]
    path = skops_payloads.write(tmp_path / "evil.skops", build(marker))
    result = run_cli([], {"MODELDEPLOY_MODEL_URI": path.as_uri(), "MODELDEPLOY_CACHE_DIR": str(tmp_path / "c")})
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("modeldeploy-server: refused:")]
    assert len(lines) == 1 and f"untrusted types ['{named}']" in lines[0], result.stderr
    assert not marker.exists()


def test_listing_a_payload_type_by_prefix_or_a_code_runner_is_refused(tmp_path: Path) -> None:
    for entry, reason in [("numpy.", "not a fully-qualified name"), ("numpy.*", "not a fully-qualified name"),
                          ("numpy", "not a fully-qualified name"), ("builtins.eval", "never trusted"),
                          ("numpy.testing.runstring", "never trusted"), ("operator.methodcaller", "never trusted"),
                          ("functools.partial", "never trusted"), ("os.system", "never trusted")]:  # fmt: skip
        with pytest.raises(LoadRefused, match=reason):
            operator_types([entry])
    marker = tmp_path / "pwned"
    build, _ = skops_payloads.PAYLOADS["eval via numpy attribute"]
    path = skops_payloads.write(tmp_path / "evil.skops", build(marker))
    with pytest.raises(LoadRefused, match="numpy.testing.assert_raises"):  # trusting one type admits no other
        load_runtime(_settings(path, tmp_path / "c", trusted_types=["numpy._core.numeric.builtins"]))
    assert not marker.exists()


def _zoo() -> dict[str, tuple[Any, np.ndarray, np.ndarray]]:
    x, y = load_iris(return_X_y=True)
    xc = x.copy()
    xc[:, 0] = np.round(xc[:, 0])
    column = ColumnTransformer([("oh", OneHotEncoder(handle_unknown="ignore"), [0]),
                                ("sc", StandardScaler(), [1, 2, 3])])  # fmt: skip
    return {
        "scaler+lr": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), x, y),
        "onehot+scaler+lr": (make_pipeline(column, LogisticRegression(max_iter=500)), xc, y),
        "scaler+forest": (make_pipeline(StandardScaler(), RandomForestClassifier(10, random_state=0)), x, y),
        "extra-trees": (ExtraTreesClassifier(10, random_state=0), x, y),
        "gradient-boosting": (GradientBoostingClassifier(n_estimators=5, random_state=0), x, y),
        "forest-regressor": (RandomForestRegressor(5, random_state=0), x[:, :3], x[:, 3]),
        "imputer+lr": (make_pipeline(SimpleImputer(), LogisticRegression(max_iter=500)), x, y),
        "voting": (VotingClassifier([("a", LogisticRegression(max_iter=500)), ("b", GaussianNB())]), x, y),
        "calibrated": (CalibratedClassifierCV(LinearSVC()), x, y),
        "mlp": (MLPClassifier(hidden_layer_sizes=(5,), max_iter=20, random_state=0), x, y),
    }  # fmt: skip


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_ordinary_models_load_without_trusted_types(tmp_path: Path) -> None:
    import skops.io as sio

    for name, (model, x, y) in _zoo().items():
        model.fit(x, y)
        path = tmp_path / f"{name}.skops"
        sio.dump(model, path)
        runtime = load_runtime(_settings(path, tmp_path / "c", compile="off"))
        assert np.array_equal(runtime.predict(x), model.predict(x)), name


def test_types_outside_the_policy_load_once_the_operator_lists_them(tmp_path: Path) -> None:
    import skops.io as sio

    x, y = load_iris(return_X_y=True)
    for model, types in [(HistGradientBoostingClassifier(max_iter=5), ["sklearn.ensemble._hist_gradient_boosting."
                                                                        "predictor.TreePredictor"]),
                         (KNeighborsClassifier(), ["sklearn.metrics._dist_metrics.EuclideanDistance64",
                                                   "sklearn.neighbors._kd_tree.KDTree"])]:  # fmt: skip
        path = tmp_path / f"{type(model).__name__}.skops"
        sio.dump(model.fit(x, y), path)
        with pytest.raises(LoadRefused, match=re.escape(f"untrusted types {types}")):
            load_runtime(_settings(path, tmp_path / "c"))
        runtime = load_runtime(_settings(path, tmp_path / "c", trusted_types=types, compile="off"))
        assert np.array_equal(runtime.predict(x), model.predict(x))


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("children_left", 10**6, "malformed"), ("children_right", -5, "malformed"), ("feature", 4, "malformed"),
    ("children_left", 0, "malformed"),  # a cycle back to the root
])  # fmt: skip
def test_a_tree_that_would_read_out_of_bounds_is_refused(tmp_path: Path, field: str, value: int, reason: str) -> None:
    import skops.io as sio

    x, y = load_iris(return_X_y=True)
    model = RandomForestClassifier(3, random_state=0).fit(x, y)
    getattr(model.estimators_[1].tree_, field)[0] = value  # the node arrays are views of the tree's memory
    path = tmp_path / "bad-tree.skops"
    sio.dump(model, path)
    with pytest.raises(LoadRefused, match=f"tree node 0 is {reason}"):
        load_runtime(_settings(path, tmp_path / "c"))


def test_a_skops_zip_bomb_is_refused_before_it_is_read(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "bomb.skops"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", b" " * 50_000_000)  # 50 MB of spaces, ~50 kB compressed
    assert path.stat().st_size < 1_000_000
    with pytest.raises(LoadRefused, match="expands to 50000000 bytes in 1 files, over MODELDEPLOY_MAX_ARTIFACT_BYTES"):
        load_runtime(_settings(path, tmp_path / "c", max_artifact_bytes=10_000_000))


def test_skops_version_mismatch_is_refused_unless_allowed_and_loads_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import zipfile

    import sklearn
    import skops.io as sio

    x, y = load_iris(return_X_y=True)
    clean = tmp_path / "clean.skops"
    sio.dump(LogisticRegression(max_iter=500).fit(x, y), clean)
    with zipfile.ZipFile(clean) as source:
        members = {name: source.read(name) for name in source.namelist()}
    schema = json.loads(members["schema.json"])
    schema["content"]["content"]["_sklearn_version"]["content"] = json.dumps("0.9.9")
    members["schema.json"] = json.dumps(schema).encode()
    path = tmp_path / "old.skops"
    with zipfile.ZipFile(path, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
    with pytest.raises(LoadRefused, match=f"saved with scikit-learn 0.9.9 but this server runs {sklearn.__version__}"):
        load_runtime(_settings(path, tmp_path / "c"))
    built = []
    original = LogisticRegression.__setstate__

    def counting(self: Any, state: dict[str, Any]) -> None:
        built.append(1)
        original(self, state)

    monkeypatch.setattr(LogisticRegression, "__setstate__", counting)
    runtime = load_runtime(_settings(path, tmp_path / "c", allow_version_mismatch=True, compile="off"))
    assert len(built) == 1  # built once (the old code loaded a mismatched skops file twice)
    assert np.array_equal(runtime.predict(x), runtime.model.predict(x))
