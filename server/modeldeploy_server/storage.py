"""Where batch scoring writes: objects under an output prefix, on a volume (file://) or S3 (s3://).

Owned here: atomic writes (a file is written under a temporary name in its directory and renamed;
an S3 PUT is atomic per object), existence checks (the last shard of a run finds every report and
writes the run's marker), and joining a prefix with a name. S3 requests are path-style and signed
like the artifact download (`fetch.s3_request`). Called by `score`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.fetch import s3_request
from modeldeploy_server.settings import Settings

OUTPUT_SCHEMES = ("file", "s3")


def join(prefix: str, name: str) -> str:
    return prefix.rstrip("/") + "/" + name


def check_output(uri: str) -> str:
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in OUTPUT_SCHEMES:
        raise LoadRefused(f"output URI {uri!r} has scheme {scheme!r}; supported: {', '.join(OUTPUT_SCHEMES)}")
    return scheme


def _path(uri: str) -> Path:
    return Path(unquote(urlsplit(uri).path))


def _s3(settings: Settings, uri: str, method: str, data: bytes = b"") -> httpx.Response:
    digest = hashlib.sha256(data).hexdigest()
    url, headers = s3_request(uri, settings.s3_endpoint, dict(os.environ), datetime.now(UTC), method, digest)
    try:
        return httpx.request(method, url, headers=headers, content=data or None, timeout=settings.fetch_timeout_seconds)
    except httpx.HTTPError as exc:
        raise LoadRefused(f"cannot {method} {uri}: {type(exc).__name__}: {exc}") from exc


def write(settings: Settings, uri: str, data: bytes) -> None:
    """Write `data` at `uri` so that a reader sees the old object or the whole new one, never a part."""
    if check_output(uri) == "s3":
        response = _s3(settings, uri, "PUT", data)
        if response.status_code not in (200, 201, 204):
            raise LoadRefused(f"cannot write {uri}: S3 answered HTTP {response.status_code}: {response.text[:200]}")
        return
    path = _path(uri)
    tmp_name = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except OSError as exc:
        if tmp_name:
            Path(tmp_name).unlink(missing_ok=True)
        raise LoadRefused(f"cannot write {uri}: {exc.strerror or exc}") from exc


def read(settings: Settings, uri: str) -> bytes | None:
    """A small object's bytes (a report), or None when there is none."""
    if check_output(uri) == "s3":
        response = _s3(settings, uri, "GET")
        if response.status_code not in (200, 404):
            raise LoadRefused(f"cannot read {uri}: S3 answered HTTP {response.status_code}")
        return response.content if response.status_code == 200 else None
    try:
        return _path(uri).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LoadRefused(f"cannot read {uri}: {exc.strerror or exc}") from exc
