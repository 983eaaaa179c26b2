"""Artifact loading: every refusal exits non-zero with one clear line; the good paths load.

Runs the real `modeldeploy-server` console script (and `load_runtime` directly for the formats),
with artifacts served from file:// and from a local HTTP server (s3://: `test_s3_store`, against
the local cluster's real S3-compatible store).
"""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import pytest
import sklearn

from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.runtime import load_runtime
from tests.server.conftest import Artifact, free_port, run_cli, sha256_of, start_cli


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path
    delay = 0.0
    seen: list[dict[str, str]]

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.seen.append(headers | {"path": self.path})
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_response(404)
            self.end_headers()
            return
        data = path.read_bytes()
        time.sleep(self.delay)
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def http_root(artifacts: dict[str, Artifact], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    root = artifacts["pipe"].path.parent
    handler = type("H", (_Handler,), {"root": root, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()


def _refused(result: Any) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("modeldeploy-server: refused:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_digest_mismatch_is_refused_before_loading(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    art = artifacts["pipe"]
    wrong = "0" * 64
    line = _refused(run_cli([], art.env(MODELDEPLOY_MODEL_SHA256=wrong, MODELDEPLOY_CACHE_DIR=str(tmp_path))))
    assert f"expected sha256 {wrong}, got {art.sha256}" in line and art.uri in line
    assert not list(tmp_path.glob("*.artifact")) and not list(tmp_path.glob(".partial-*"))


def test_pickle_that_would_run_code_is_never_unpickled_on_a_digest_mismatch(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    path = tmp_path / "evil.joblib"
    joblib.dump(Evil(), path)
    env = {"MODELDEPLOY_MODEL_URI": path.as_uri(), "MODELDEPLOY_MODEL_SHA256": "1" * 64,
           "MODELDEPLOY_CACHE_DIR": str(tmp_path / "c")}  # fmt: skip
    _refused(run_cli([], env))
    assert not marker.exists()


def test_joblib_without_digest_is_refused(artifacts: dict[str, Artifact]) -> None:
    env = artifacts["pipe"].env()
    del env["MODELDEPLOY_MODEL_SHA256"]
    assert "without MODELDEPLOY_MODEL_SHA256" in _refused(run_cli([], env))


def test_version_mismatch_is_refused_unless_allowed(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    art = artifacts["pipe"]
    data = art.path.read_bytes()
    current = sklearn.__version__.encode()
    old = b"0." + b"9" * (len(current) - 2)  # same length: the pickle framing stays valid
    assert data.count(current) >= 1
    path = tmp_path / "old.joblib"
    path.write_bytes(data.replace(current, old))
    digest = sha256_of(path)
    env = art.env(MODELDEPLOY_MODEL_URI=path.as_uri(), MODELDEPLOY_MODEL_SHA256=digest,
                  MODELDEPLOY_CACHE_DIR=str(tmp_path / "c"))  # fmt: skip
    line = _refused(run_cli([], env))
    assert f"saved with scikit-learn {old.decode()} but this server runs {sklearn.__version__}" in line
    settings = art.settings(tmp_path / "c", model_uri=path.as_uri(), model_sha256=digest, allow_version_mismatch=True)
    assert load_runtime(settings).path


def test_inputs_that_do_not_fit_the_model_are_refused(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    env = artifacts["pipe"].env(
        MODELDEPLOY_INPUTS='[{"name": "a"}, {"name": "b"}]', MODELDEPLOY_CACHE_DIR=str(tmp_path)
    )
    assert "declares 2 features but the model expects 4" in _refused(run_cli([], env))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [({"MODELDEPLOY_MODEL_URI": "ftp://x/model.joblib"}, "unsupported scheme 'ftp'"),
     ({"MODELDEPLOY_MODEL_URI": "file:///nonexistent/model.joblib"}, "cannot read model artifact"),
     ({"MODELDEPLOY_MODEL_SHA256": "xyz"}, "invalid setting MODELDEPLOY_MODEL_SHA256"),
     ({"MODELDEPLOY_INPUTS": "[{\"name\": \"a\", \"min\": 3, \"max\": 1}]"}, "invalid setting MODELDEPLOY_INPUTS"),
     # a NaN bound would switch the range check off (no value compares below NaN)
     ({"MODELDEPLOY_INPUTS": '[{"name": "a", "min": NaN}, {"name": "b"}, {"name": "c"}, {"name": "d"}]'},
      "invalid setting MODELDEPLOY_INPUTS.0.MIN"),
     ({"MODELDEPLOY_INPUTS": '[{"name": "a", "max": Infinity}, {"name": "b"}, {"name": "c"}, {"name": "d"}]'},
      "invalid setting MODELDEPLOY_INPUTS.0.MAX"),
     # a row keyed by name could only give one of two same-named features
     ({"MODELDEPLOY_INPUTS": '[{"name": "a"}, {"name": "a"}, {"name": "c"}, {"name": "d"}]'},
      "input 'a' is declared twice"),
     # not JSON at all: one line, not a traceback
     ({"MODELDEPLOY_INPUTS": "not json"}, "invalid setting MODELDEPLOY_INPUTS: not valid JSON")],
)  # fmt: skip
def test_bad_settings_are_refused_with_one_line(artifacts: dict[str, Artifact], override: dict[str, str],
                                                 fragment: str, tmp_path: Path) -> None:  # fmt: skip
    # a cache of its own: a verified copy in the machine's cache would be served for a missing file
    env = artifacts["pipe"].env(MODELDEPLOY_CACHE_DIR=str(tmp_path), **override)
    assert fragment in _refused(run_cli([], env))


def test_an_unsupported_scheme_is_refused_even_with_a_cached_copy(tmp_path: Path) -> None:
    """The cache is content-addressed, so a digest hit needs no fetch; but a URI this server could
    never fetch is a configuration error and is refused whatever the cache holds."""
    import hashlib

    from modeldeploy_server.fetch import fetch_verified
    from modeldeploy_server.settings import Settings

    data = b"verified bytes"
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / f"{digest}.artifact").write_bytes(data)
    ok = Settings(model_uri="file:///nowhere/model.joblib", model_sha256=digest, cache_dir=tmp_path)
    assert fetch_verified(ok) == (tmp_path / f"{digest}.artifact", digest)
    bad = ok.model_copy(update={"model_uri": "ftp://x/model.joblib"})
    with pytest.raises(LoadRefused, match="unsupported scheme 'ftp'"):
        fetch_verified(bad)


def test_skops_loads_with_trusted_types_and_refuses_untrusted(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    art = artifacts["pipe"]
    path = art.extra["skops"]
    settings = art.settings(tmp_path, model_uri=path.as_uri(), model_sha256=None, model_format=None)
    runtime = load_runtime(settings)
    assert runtime.format == "skops"
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    evil = tmp_path / "evil.skops"
    sio.dump(FunctionTransformer(func=print), evil)
    bad = art.settings(tmp_path, model_uri=evil.as_uri(), model_sha256=None, inputs=[])
    with pytest.raises(LoadRefused, match=r"untrusted types \['builtins.print'\]"):
        load_runtime(bad)


def test_onnx_artifact_is_served(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    import numpy as np
    from skl2onnx import to_onnx

    art = artifacts["porosity"]
    path = tmp_path / "model.onnx"
    path.write_bytes(to_onnx(art.model, art.rows[:1].astype(np.float32)).SerializeToString())
    runtime = load_runtime(art.settings(tmp_path, model_uri=path.as_uri(), model_sha256=sha256_of(path)))
    assert runtime.format == "onnx" and runtime.contract.names == ("RHOB", "NPHI", "GR")
    assert np.allclose(runtime.predict(art.rows), art.model.predict(art.rows), rtol=1e-5, atol=1e-5)


def test_http_artifact_and_cache_reuse(artifacts: dict[str, Artifact], http_root: Any, tmp_path: Path) -> None:
    url, handler = http_root
    art = artifacts["pipe"]
    settings = art.settings(tmp_path, model_uri=f"{url}/pipe.joblib")
    assert load_runtime(settings).sha256 == art.sha256
    before = len(handler.seen)
    assert load_runtime(settings).sha256 == art.sha256  # verified copy in the cache: not downloaded again
    assert len(handler.seen) == before
    with pytest.raises(LoadRefused, match="HTTP 404"):
        load_runtime(art.settings(tmp_path / "x", model_uri=f"{url}/missing.joblib"))


def test_readiness_is_503_while_loading_then_200(
    artifacts: dict[str, Artifact], http_root: Any, tmp_path: Path
) -> None:
    url, handler = http_root
    handler.delay = 2.0
    port = free_port()
    env = artifacts["pipe"].env(MODELDEPLOY_MODEL_URI=f"{url}/pipe.joblib", MODELDEPLOY_PORT=str(port),
                                MODELDEPLOY_CACHE_DIR=str(tmp_path))  # fmt: skip
    proc = start_cli(env, tmp_path / "log")
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # process start on a loaded 2-core machine took > 30 s once
        while True:
            try:
                live = httpx.get(f"{base}/v2/health/live")
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert live.status_code == 200
        assert httpx.get(f"{base}/v2/health/ready").status_code == 503
        assert httpx.post(f"{base}/v1/models/pipe:predict", json={"instances": [[5, 3, 1, 0.2]]}).status_code == 503
        while httpx.get(f"{base}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        handler.delay = 0.0
        proc.terminate()
        proc.wait(timeout=30)


def test_refusal_while_serving_never_turns_ready_and_exits_2(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    port = free_port()
    env = artifacts["pipe"].env(MODELDEPLOY_MODEL_SHA256="2" * 64, MODELDEPLOY_PORT=str(port),
                                MODELDEPLOY_CACHE_DIR=str(tmp_path))  # fmt: skip
    proc = start_cli(env, tmp_path / "log")
    readiness = []
    while proc.poll() is None:
        try:
            readiness.append(httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code)
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    assert proc.returncode == 2
    assert 200 not in readiness
    assert "digest mismatch" in (tmp_path / "log").read_text()


def test_sha256_streamed_matches_hashlib(artifacts: dict[str, Artifact]) -> None:
    art = artifacts["forest"]
    assert hashlib.sha256(art.path.read_bytes()).hexdigest() == art.sha256


def test_flags_override_the_environment(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    env = artifacts["pipe"].env(MODELDEPLOY_CACHE_DIR=str(tmp_path))
    result = run_cli(["--model-uri", "file:///nowhere/model.joblib"], env)
    assert "cannot read model artifact file:///nowhere/model.joblib" in _refused(result)
    result = run_cli(["score", "--input", "x.csv", "--output", "y.csv", "--model-sha256", "4" * 64], env)
    assert f"expected sha256 {'4' * 64}" in _refused(result)
