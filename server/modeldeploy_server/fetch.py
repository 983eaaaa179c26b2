"""Fetch an artifact (file://, http(s)://, s3://) into the local cache, verifying its SHA-256.

Owned here: streaming each byte through SHA-256 into a temporary file in the cache directory,
comparing with the expected digest BEFORE anything is deserialized, and the refusal lines. Called
by `runtime.load_runtime`. A file:// artifact is copied too, so the bytes that are loaded are the
bytes that were hashed (no window for the source to change in between).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from modeldeploy_server import sigv4
from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.settings import Settings

CHUNK = 1 << 20


def _file_chunks(uri: str) -> Iterator[bytes]:
    path = Path(unquote(urlsplit(uri).path))
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise LoadRefused(f"cannot read model artifact {uri}: {exc.strerror or exc}") from exc
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def _http_chunks(url: str, headers: dict[str, str], timeout: float, shown_uri: str) -> Iterator[bytes]:
    try:
        with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 200:
                raise LoadRefused(f"cannot fetch model artifact {shown_uri}: HTTP {response.status_code}")
            yield from response.iter_bytes(CHUNK)
    except httpx.HTTPError as exc:
        raise LoadRefused(f"cannot fetch model artifact {shown_uri}: {type(exc).__name__}: {exc}") from exc


def s3_request(uri: str, endpoint: str | None, env: dict[str, str], now: datetime) -> tuple[str, dict[str, str]]:
    """The path-style URL and signed headers for GET s3://bucket/key (unsigned without credentials)."""
    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise LoadRefused(f"s3 URI {uri} must be s3://<bucket>/<key>")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
    base = (endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "").rstrip("/")
    if not base:
        base = f"https://s3.{region}.amazonaws.com"
    endpoint_parts = urlsplit(base)
    path = f"{endpoint_parts.path.rstrip('/')}/{bucket}/{key}"
    url = f"{endpoint_parts.scheme}://{endpoint_parts.netloc}{sigv4.canonical_uri(path, double_encode=False)}"
    access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        return url, {}
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    headers = {"host": endpoint_parts.netloc, "x-amz-content-sha256": sigv4.EMPTY_SHA256, "x-amz-date": amz_date}
    token = env.get("AWS_SESSION_TOKEN")
    if token:
        headers["x-amz-security-token"] = token
    headers["authorization"] = sigv4.sign(
        "GET",
        path,
        {},
        headers,
        payload_sha256=sigv4.EMPTY_SHA256,
        credentials=sigv4.Credentials(access, secret, token),
        region=region,
        service="s3",
        amz_date=amz_date,
    )
    del headers["host"]
    return url, headers


def _chunks(settings: Settings) -> Iterator[bytes]:
    uri = settings.model_uri
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme == "file":
        return _file_chunks(uri)
    if scheme in ("http", "https"):
        return _http_chunks(uri, {}, settings.fetch_timeout_seconds, uri)
    if scheme == "s3":
        url, headers = s3_request(uri, settings.s3_endpoint, dict(os.environ), datetime.now(UTC))
        return _http_chunks(url, headers, settings.fetch_timeout_seconds, uri)
    raise LoadRefused(f"model URI {uri!r} has unsupported scheme {scheme!r}; supported: file, http, https, s3")


def discard(path: Path) -> None:
    """Remove a cached artifact that was verified but cannot be served (it would be re-verified, never used)."""
    path.unlink(missing_ok=True)


def fetch_verified(settings: Settings) -> tuple[Path, str]:
    """Stream the artifact into the cache; return (path, sha256). Refuses on any digest mismatch."""
    if not settings.model_uri:
        raise LoadRefused("MODELDEPLOY_MODEL_URI is not set: nothing to serve")
    cache = settings.cache_dir
    expected = settings.model_sha256
    if expected is not None and (cache / f"{expected}.artifact").is_file():
        # A verified copy from an earlier start (or the parent of the workers): re-hash, never trust a name.
        cached = cache / f"{expected}.artifact"
        digest = hashlib.sha256()
        with cached.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() == expected:
            return cached, expected
        cached.unlink(missing_ok=True)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".partial-", dir=cache)
    except OSError as exc:
        raise LoadRefused(f"cannot use cache directory {cache}: {exc.strerror or exc}") from exc
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in _chunks(settings):
                digest.update(chunk)
                out.write(chunk)
        actual = digest.hexdigest()
        if expected is not None and actual != expected:
            raise LoadRefused(
                f"model artifact digest mismatch for {settings.model_uri}: expected sha256 {expected}, got {actual}"
            )
        final = cache / f"{actual}.artifact"
        os.replace(tmp_name, final)
        return final, actual
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
