"""Where a file lives: a local path, or a URL of any fsspec filesystem (`s3://`, `gs://`, `memory://` ...).

A local path stays a plain `pathlib.Path`, so local runs behave exactly as they always did. A URL becomes a
`universal_pathlib` `UPath`: the same path API (`/`, `exists`, `open`, `glob`, `read_text` ...) over fsspec.
Credentials and endpoints come from the filesystem's usual environment: for S3, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION` and `AWS_ENDPOINT_URL` (an S3-compatible store such as MinIO),
which s3fs and botocore read themselves; for Google Cloud Storage, `GOOGLE_APPLICATION_CREDENTIALS`.

Object stores have no rename, so a finished file is written to a local temporary file and uploaded to its
final key in one PUT (`put_file`): an object appears under its name only when complete.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any, Iterator

import fsspec
from pydantic import PlainSerializer, PlainValidator

from cotaforge.errors import ConfigError, CotaforgeError

_URL = re.compile(r"^(?P<protocol>[A-Za-z][A-Za-z0-9+.-]*)://")
# The pip extra that brings a protocol's fsspec implementation.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def url_protocol(text: str) -> str | None:
    """The protocol of a URL (`s3` of `s3://bucket/key`), None for a local path."""
    match = _URL.match(text)
    return match["protocol"].lower() if match else None


def check_protocol(url: str) -> None:
    """ConfigError (a ValueError) naming the URL and what to install when no fsspec filesystem serves its
    protocol."""
    protocol = url_protocol(url)
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        extra = EXTRAS.get(protocol)
        install = f"pip install 'cotaforge[{extra}]'" if extra else f"install the fsspec package for '{protocol}'"
        raise ConfigError(f"{url}: reading or writing {protocol}:// needs a package that is not installed "
                         f"({exc}); {install}") from None
    except ValueError:
        raise ConfigError(f"{url}: no fsspec filesystem is known for '{protocol}://'; use a local path or a URL "
                         "such as s3://bucket/prefix or gs://bucket/prefix (extras 's3', 'gcs')") from None


def location(value: str | os.PathLike) -> Path:
    """A local `Path` for a path or `file://` URL; a `UPath` for any other URL (when no installed
    filesystem serves it: ConfigError). Typed as Path: a UPath offers the same methods."""
    from upath import UPath

    if isinstance(value, UPath) and not isinstance(value, Path):
        return value  # type: ignore[return-value]
    if isinstance(value, Path):
        return value
    text = os.fspath(value)
    protocol = url_protocol(text)
    if protocol is None:
        return Path(text)
    if protocol == "file":
        return Path(text[len("file://"):])
    check_protocol(text)
    # No listings cache: parts are written by other processes (Dask workers, a concurrent run), and a cached
    # listing would call a finished part missing.
    return UPath(text, use_listings_cache=False)  # type: ignore[return-value]


def is_remote(path: object) -> bool:
    """Whether `path` is a URL location (a UPath that is not a local pathlib.Path)."""
    return not isinstance(path, Path) and hasattr(path, "fs") and hasattr(path, "protocol")


def arrow_source(path: Path) -> tuple[str, Any]:
    """`(where, filesystem)` for pyarrow's readers: the plain path string locally, fsspec's filesystem for a URL."""
    if is_remote(path):
        return path.path, path.fs  # type: ignore[attr-defined]
    return str(path), None


@contextmanager
def upload_when_done(path: Path, suffix: str = "") -> Iterator[Path]:
    """A local temporary file to write; when the block ends without an error it is uploaded to `path` in one
    PUT (objects appear whole), and it is deleted either way. For remote `path` only."""
    handle, name = tempfile.mkstemp(prefix=".cotaforge-", suffix=suffix or ".tmp")
    os.close(handle)
    local = Path(name)
    try:
        yield local
        put_file(local, path)
    finally:
        local.unlink(missing_ok=True)


def put_file(local: Path, path: Path) -> None:
    """Upload a finished local file to the URL `path` (one PUT; large files a multipart upload that also
    appears only once complete)."""
    with storage_errors(path):
        path.fs.put_file(str(local), path.path)  # type: ignore[attr-defined]


def storage_problem(exc: BaseException, url: object) -> str | None:
    """What to tell the user about an object-store failure at `url`; None when `exc` is not one."""
    name = type(exc).__name__
    text = str(exc).splitlines()[0][:300] if str(exc) else name
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return (f"{url}: no credentials were found ({text}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(and AWS_ENDPOINT_URL for an S3-compatible store), or the credentials of the store's own "
                "filesystem")
    if isinstance(exc, PermissionError) or name in ("ClientError", "NoAuthTokenError"):
        return (f"{url}: access denied ({text}); check the credentials (AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for an S3-compatible store) and the bucket's permissions")
    if isinstance(exc, FileNotFoundError) and "bucket" in text.lower():
        return f"{url}: the bucket does not exist ({text}); create it first or fix the URL"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError") or isinstance(
            exc, ConnectionError):
        return (f"{url}: the store could not be reached ({text}); check AWS_ENDPOINT_URL (or the store's "
                "address) and the network")
    return None


@contextmanager
def storage_errors(url: object) -> Iterator[None]:
    """Turn an object store's credential, bucket and connection failures into a CotaforgeError naming `url`
    (a URL location; local paths raise what they raise)."""
    if not is_remote(url):
        yield
        return
    try:
        yield
    except CotaforgeError:
        raise
    except Exception as exc:  # the filesystems raise their own types (botocore, aiohttp, google-auth)
        problem = storage_problem(exc, url)
        if problem is None:
            raise
        raise CotaforgeError(problem) from exc


def check_reachable(path: Path) -> None:
    """For a URL, list its bucket (or top folder) once, so a missing bucket, missing credentials or an
    unreachable store stop the command before any work, with a CotaforgeError naming the URL. Local: nothing."""
    if not is_remote(path):
        return
    fs = path.fs  # type: ignore[attr-defined]
    root = path.path.split("/", 1)[0]  # type: ignore[attr-defined]
    with storage_errors(path):
        try:
            fs.ls(root, detail=False)
        except FileNotFoundError as exc:
            raise CotaforgeError(f"{path}: the bucket '{root}' does not exist ({exc}); create it first or fix "
                                 "the URL") from exc


def open_input(path: Path, mode: str = "rb", **kwargs: Any) -> IO:
    """Open a file to read, local or remote (`kwargs`: `open`'s, e.g. encoding); the CotaforgeError of
    `storage_errors` for store failures."""
    with storage_errors(path):
        return path.open(mode, **kwargs) if is_remote(path) else open(path, mode, **kwargs)


def _validate_location(value: object) -> Path | None:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)) or is_remote(value):
        return location(value)  # type: ignore[arg-type]
    raise ValueError(f"expected a path or URL, got {type(value).__name__}")


# A config field holding a local path or a URL: validated by `location`, written as its text (as a Path is).
LocationPath = Annotated[Path, PlainValidator(_validate_location), PlainSerializer(str, when_used="json")]
