"""Fetch an artifact (file://, http(s)://, s3://) into the local cache, verifying its SHA-256.

Owned here: streaming each byte through SHA-256 into a temporary file in the cache directory,
comparing with the expected digest BEFORE anything is deserialized, and the refusal lines. Called
by `runtime.load_runtime`. A file:// artifact is copied too, so the bytes that are loaded are the
bytes that were hashed (no window for the source to change in between).

Bounds: at most `MODELDEPLOY_MAX_ARTIFACT_BYTES` (a larger Content-Length is refused before the
body is read), and the whole download within `MODELDEPLOY_FETCH_TIMEOUT_SECONDS` (also the limit of
each connect and read), so an endless or trickling source is refused with one line. Bytes are
requested and hashed as stored (`Accept-Encoding: identity`, no decompression). Redirects: an
http(s) redirect is followed only to the same scheme, host and port; an S3 request (signed for
one host) follows none, so credentials and the session token never leave the configured host.
A failed or refused download leaves no `.partial-*` file; ones left by a killed process are
removed once they are older than the deadline; `discard` removes a verified artifact that then
could not be loaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from modeldeploy_server import sigv4
from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.settings import Settings

CHUNK = 1 << 20
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
log = logging.getLogger("modeldeploy_server.fetch")


class _Limits:
    """The byte budget and the deadline of one download."""

    def __init__(self, settings: Settings, uri: str | None = None, what: str = "model artifact") -> None:
        self.uri = settings.model_uri if uri is None else uri
        self.what = what
        self.max_bytes = settings.max_artifact_bytes
        self.timeout = settings.fetch_timeout_seconds
        self.deadline = time.monotonic() + self.timeout
        self.read = 0

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise LoadRefused(
                f"cannot fetch {self.what} {self.uri}: not complete within MODELDEPLOY_FETCH_TIMEOUT_SECONDS="
                f"{self.timeout:g} (after {self.read} bytes)"
            )
        return left

    def declared(self, length: int) -> None:
        if length > self.max_bytes:
            raise LoadRefused(
                f"{self.what} {self.uri} is {length} bytes, over MODELDEPLOY_MAX_ARTIFACT_BYTES={self.max_bytes}"
            )

    def count(self, chunk: bytes) -> bytes:
        self.read += len(chunk)
        if self.read > self.max_bytes:
            raise LoadRefused(
                f"{self.what} {self.uri} is over MODELDEPLOY_MAX_ARTIFACT_BYTES={self.max_bytes} bytes; "
                "download stopped"
            )
        self.remaining()
        return chunk


def _file_chunks(uri: str, limits: _Limits) -> Iterator[bytes]:
    path = Path(unquote(urlsplit(uri).path))
    try:
        handle = path.open("rb")
        limits.declared(os.fstat(handle.fileno()).st_size)
    except OSError as exc:
        raise LoadRefused(f"cannot read {limits.what} {uri}: {exc.strerror or exc}") from exc
    with handle:
        while chunk := handle.read(CHUNK):
            yield limits.count(chunk)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def _http_chunks(url: str, headers: dict[str, str], limits: _Limits, shown_uri: str, *, s3: bool) -> Iterator[bytes]:
    """GET `url`, following same-origin redirects only (none for S3), within the byte and time budget."""
    headers = {**headers, "accept-encoding": "identity"}
    current = url
    try:
        with httpx.Client(follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                left = limits.remaining()
                timeout = httpx.Timeout(min(limits.timeout, left))
                with client.stream("GET", current, headers=headers, timeout=timeout) as response:
                    if response.status_code in REDIRECTS:
                        target = urljoin(current, response.headers.get("location", ""))
                        if s3:
                            raise LoadRefused(
                                f"cannot fetch {limits.what} {shown_uri}: S3 answered HTTP {response.status_code} "
                                f"redirecting to {target[:200]}; redirects are not followed for S3 (the request is "
                                "signed for one host)"
                            )
                        if _origin(target) != _origin(current):
                            raise LoadRefused(
                                f"cannot fetch {limits.what} {shown_uri}: redirect from {current[:200]} to another "
                                f"origin {target[:200]} refused"
                            )
                        log.info("artifact redirect", extra={"fields": {"from": current, "to": target}})
                        current = target
                        continue
                    if response.status_code != 200:
                        raise LoadRefused(f"cannot fetch {limits.what} {shown_uri}: HTTP {response.status_code}")
                    length = response.headers.get("content-length")
                    if length is not None and length.strip().isdigit():
                        limits.declared(int(length))
                    for chunk in response.iter_raw():
                        yield limits.count(chunk)
                    return
            raise LoadRefused(f"cannot fetch {limits.what} {shown_uri}: more than {MAX_REDIRECTS} redirects")
    except httpx.HTTPError as exc:
        if limits.deadline <= time.monotonic():
            limits.remaining()
        raise LoadRefused(f"cannot fetch {limits.what} {shown_uri}: {type(exc).__name__}: {exc}") from exc


def s3_request(
    uri: str,
    endpoint: str | None,
    env: dict[str, str],
    now: datetime,
    method: str = "GET",
    payload_sha256: str = sigv4.EMPTY_SHA256,
) -> tuple[str, dict[str, str]]:
    """The path-style URL and signed headers for `method` s3://bucket/key (unsigned without credentials)."""
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
    headers = {"host": endpoint_parts.netloc, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
    token = env.get("AWS_SESSION_TOKEN")
    if token:
        headers["x-amz-security-token"] = token
    headers["authorization"] = sigv4.sign(
        method,
        path,
        {},
        headers,
        payload_sha256=payload_sha256,
        credentials=sigv4.Credentials(access, secret, token),
        region=region,
        service="s3",
        amz_date=amz_date,
    )
    del headers["host"]
    return url, headers


SCHEMES = ("file", "http", "https", "s3")


def _scheme(uri: str) -> str:
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in SCHEMES:
        raise LoadRefused(f"URI {uri!r} has unsupported scheme {scheme!r}; supported: {', '.join(SCHEMES)}")
    return scheme


def _chunks(settings: Settings, uri: str | None = None, what: str = "model artifact") -> Iterator[bytes]:
    """The bytes of `uri` (default: the model artifact's) within the size and time budget."""
    limits = _Limits(settings, uri, what)
    uri = limits.uri
    scheme = _scheme(uri)
    if scheme == "file":
        return _file_chunks(uri, limits)
    if scheme in ("http", "https"):
        return _http_chunks(uri, {}, limits, uri, s3=False)
    # the remaining scheme: s3
    url, headers = s3_request(uri, settings.s3_endpoint, dict(os.environ), datetime.now(UTC))
    return _http_chunks(url, headers, limits, uri, s3=True)


def _remove_stale_partials(cache: Path, deadline_seconds: float) -> None:
    """Remove `.partial-*` files older than any download can run (left behind by a killed process)."""
    cutoff = time.time() - deadline_seconds - 60
    for stale in cache.glob(".partial-*"):
        try:
            if stale.stat().st_mtime < cutoff:
                stale.unlink()
        except OSError:
            continue  # another process finished or removed it meanwhile


def discard(path: Path) -> None:
    """Remove a cached artifact that was verified but cannot be served (it would be re-verified, never used)."""
    path.unlink(missing_ok=True)


def fetch_verified(settings: Settings) -> tuple[Path, str]:
    """Stream the artifact into the cache; return (path, sha256). Refuses on any digest mismatch."""
    if not settings.model_uri:
        raise LoadRefused("MODELDEPLOY_MODEL_URI is not set: nothing to serve")
    _scheme(settings.model_uri)  # a URI this server could never fetch is refused, cached copy or not
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
        _remove_stale_partials(cache, settings.fetch_timeout_seconds)
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


def download(settings: Settings, uri: str, dest: Path, what: str) -> Path:
    """Stream `uri` (file, http(s), s3) to `dest` within the size and time budget; no partial file is left."""
    _scheme(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".partial-", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in _chunks(settings, uri, what):
                out.write(chunk)
        os.replace(tmp_name, dest)
        return dest
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
