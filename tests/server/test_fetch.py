"""The artifact fetch under a hostile or broken source: real HTTP servers on 127.0.0.1 and 127.0.0.2.

Redirects never leave the origin (and never for S3, whose credentials and session token must not
reach another host); a size cap and a total deadline refuse endless, oversized and trickling
downloads with one line; refused downloads, stale partial files and verified-but-unloadable
artifacts leave nothing in the cache.
"""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.runtime import load_runtime
from tests.server.conftest import Artifact, sha256_of

Behaviour = Callable[[http.server.BaseHTTPRequestHandler], None]


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict[str, Behaviour]
    seen: list[dict[str, str]]

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append({k.lower(): v for k, v in self.headers.items()} | {"path": self.path})
        behaviour = self.routes.get(self.path.split("?")[0])
        if behaviour is None:
            self.send_response(404)
            self.send_header("content-length", "0")
            self.end_headers()
            return
        try:
            behaviour(self)
        except (BrokenPipeError, ConnectionResetError):
            pass


class Host:
    def __init__(self, address: str) -> None:
        self.handler = type("H", (_Handler,), {"routes": {}, "seen": []})
        self.server = http.server.ThreadingHTTPServer((address, 0), self.handler)
        self.server.daemon_threads = True
        self.url = f"http://{address}:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def seen(self) -> list[dict[str, str]]:
        return self.handler.seen

    def route(self, path: str, behaviour: Behaviour) -> str:
        self.handler.routes[path] = behaviour
        return self.url + path


@pytest.fixture
def hosts() -> Iterator[tuple[Host, Host]]:
    here, there = Host("127.0.0.1"), Host("127.0.0.2")
    yield here, there
    for host in (here, there):
        host.server.shutdown()
        host.server.server_close()


def body(data: bytes) -> Behaviour:
    def send(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("content-length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    return send


def redirect(location: str, status: int = 302) -> Behaviour:
    def send(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("location", location)
        h.send_header("content-length", "0")
        h.end_headers()

    return send


def endless(h: http.server.BaseHTTPRequestHandler) -> None:
    h.protocol_version = "HTTP/1.0"  # no content-length: the body ends when the connection closes
    h.send_response(200)
    h.end_headers()
    block = b"\0" * 65536
    for _ in range(100_000):
        h.wfile.write(block)


def drip(h: http.server.BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("content-length", "1000000")
    h.end_headers()
    for _ in range(1000):
        h.wfile.write(b"x")
        h.wfile.flush()
        time.sleep(0.2)


def _cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_same_origin_redirect_is_followed(artifacts: dict[str, Artifact], hosts: tuple[Host, Host],
                                          tmp_path: Path) -> None:  # fmt: skip
    here, _ = hosts
    art = artifacts["pipe"]
    here.route("/real/pipe.joblib", body(art.path.read_bytes()))
    uri = here.route("/pipe.joblib", redirect("/real/pipe.joblib", 301))
    assert load_runtime(art.settings(tmp_path, model_uri=uri, compile="off")).sha256 == art.sha256
    assert [s["path"] for s in here.seen] == ["/pipe.joblib", "/real/pipe.joblib"]
    assert all(s["accept-encoding"] == "identity" for s in here.seen)


def test_redirect_to_another_host_is_refused_and_never_requested(
    artifacts: dict[str, Artifact], hosts: tuple[Host, Host], tmp_path: Path
) -> None:
    here, there = hosts
    art = artifacts["pipe"]
    target = there.route("/elsewhere/pipe.joblib", body(art.path.read_bytes()))
    for source, location in [("/a.joblib", target), ("/b.joblib", here.url.replace("127.0.0.1", "localhost") + "/x"),
                             ("/c.joblib", "https" + here.url[4:] + "/x")]:  # fmt: skip
        uri = here.route(source, redirect(location))
        with pytest.raises(LoadRefused, match="to another origin .* refused"):
            load_runtime(art.settings(tmp_path, model_uri=uri))
    assert there.seen == []
    assert _cache_files(tmp_path) == []


def test_s3_never_follows_a_redirect_and_the_session_token_stays_home(
    artifacts: dict[str, Artifact], hosts: tuple[Host, Host], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here, there = hosts
    art = artifacts["pipe"]
    there.route("/bucket/pipe.joblib", body(art.path.read_bytes()))
    here.route("/bucket/pipe.joblib", redirect(there.url + "/bucket/pipe.joblib", 307))
    here.route("/bucket/same.joblib", redirect("/bucket/pipe2.joblib", 307))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "SESSION-TOKEN-MUST-NOT-LEAVE")
    for key in ("pipe.joblib", "same.joblib"):
        with pytest.raises(LoadRefused, match="redirects are not followed for S3"):
            load_runtime(art.settings(tmp_path, model_uri=f"s3://bucket/{key}", s3_endpoint=here.url))
    assert there.seen == []
    assert here.seen[0]["x-amz-security-token"] == "SESSION-TOKEN-MUST-NOT-LEAVE"  # it did go to the endpoint
    assert [s["path"] for s in here.seen] == ["/bucket/pipe.joblib", "/bucket/same.joblib"]


def test_declared_size_over_the_cap_is_refused_before_reading(
    artifacts: dict[str, Artifact], hosts: tuple[Host, Host], tmp_path: Path
) -> None:
    here, _ = hosts
    art = artifacts["pipe"]
    data = art.path.read_bytes()
    uri = here.route("/pipe.joblib", body(data))
    with pytest.raises(LoadRefused, match=f"is {len(data)} bytes, over MODELDEPLOY_MAX_ARTIFACT_BYTES=1000"):
        load_runtime(art.settings(tmp_path, model_uri=uri, max_artifact_bytes=1000))
    with pytest.raises(LoadRefused, match="over MODELDEPLOY_MAX_ARTIFACT_BYTES=1000"):  # file:// too
        load_runtime(art.settings(tmp_path, max_artifact_bytes=1000))
    assert _cache_files(tmp_path) == []


def test_endless_download_is_stopped_at_the_cap_and_leaves_no_partial(
    artifacts: dict[str, Artifact], hosts: tuple[Host, Host], tmp_path: Path
) -> None:
    here, _ = hosts
    uri = here.route("/endless.joblib", endless)
    started = time.monotonic()
    with pytest.raises(LoadRefused, match="over MODELDEPLOY_MAX_ARTIFACT_BYTES=5000000 bytes; download stopped"):
        load_runtime(artifacts["pipe"].settings(tmp_path, model_uri=uri, max_artifact_bytes=5_000_000))
    assert time.monotonic() - started < 30
    assert _cache_files(tmp_path) == []


def test_trickling_download_is_refused_at_the_total_deadline(
    artifacts: dict[str, Artifact], hosts: tuple[Host, Host], tmp_path: Path
) -> None:
    here, _ = hosts
    uri = here.route("/drip.joblib", drip)
    started = time.monotonic()
    with pytest.raises(LoadRefused, match="not complete within MODELDEPLOY_FETCH_TIMEOUT_SECONDS=1.5"):
        load_runtime(artifacts["pipe"].settings(tmp_path, model_uri=uri, fetch_timeout_seconds=1.5))
    assert time.monotonic() - started < 5
    assert _cache_files(tmp_path) == []


def test_verified_but_unloadable_artifact_is_removed_from_the_cache(tmp_path: Path) -> None:
    from modeldeploy_server.settings import Settings

    bogus = tmp_path / "model.joblib"
    bogus.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")  # a correct digest of bytes that are no model
    settings = Settings(model_uri=bogus.as_uri(), model_sha256=sha256_of(bogus), cache_dir=tmp_path / "cache")
    with pytest.raises(LoadRefused, match="cannot load joblib artifact"):
        load_runtime(settings)
    assert _cache_files(tmp_path / "cache") == []


def test_stale_partial_files_are_removed_fresh_ones_kept(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    stale, fresh = cache / ".partial-killed", cache / ".partial-running"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    art = artifacts["pipe"]
    load_runtime(art.settings(cache, compile="off", fetch_timeout_seconds=60))
    assert _cache_files(cache) == sorted([".partial-running", f"{art.sha256}.artifact"])
