"""A study's artifact store: the front's weights, the base checkpoint and the final fine-tune's
checkpoints, in a folder or an S3-compatible bucket, through Optuna's artifact stores.

``Artifacts(url)`` is one study's part of a store, named by a URL: a folder (the default, the local
runs folder; a shared mount works across machines), ``s3://bucket/prefix`` (AWS S3, or MinIO, Ceph,
R2 and the like through ``AWS_ENDPOINT_URL``) or ``gs://bucket/prefix`` (Google Cloud Storage).
Credentials come from where boto3 or Google's client looks for them (the environment, ``~/.aws``,
Application Default Credentials, the machine's role), never from the URL. Every call goes through
Optuna's :class:`~optuna.artifacts.Backoff`: a store that is unreachable for a while is retried with
exponential backoff (one log line per retry), then one error that names the store and the reason.

A write is whole or absent: a folder store writes a temporary file and renames it; an S3 PUT is
atomic. What reads weights checks their sha256 against the one the trial recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from optuna.artifacts import Backoff, Boto3ArtifactStore, FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from autoprune._logging import get_logger
from autoprune.errors import AutopruneError, ConfigError

log = get_logger(__name__)

RETRIES = 10
"""Tries of each store call before it fails: Optuna's backoff waits 0.1 s, doubling, up to 30 s
between them (about 80 s in all)."""

S3_PREFIX = "s3://"
GS_PREFIX = "gs://"
BASE_KEY = "base.pt"
"""The study's base checkpoint, in a store given by ``--artifacts``."""


class ArtifactStoreError(AutopruneError):
    """The artifact store failed after its retries, or refuses what the study needs."""


class _Folder(FileSystemArtifactStore):
    """Optuna's folder store, with keys in subfolders and writes that are whole or absent."""

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        path = self._get_filepath(artifact_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(content_body.read())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def keys(self, prefix: str) -> list[str]:
        root = Path(self._base_path)
        found = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [key for key in found if key.startswith(prefix)]

    def exists(self, artifact_id: str) -> bool:
        return self._get_filepath(artifact_id).is_file()


class _Bucket(Boto3ArtifactStore):
    """Optuna's S3 store, listing keys too."""

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def exists(self, artifact_id: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=artifact_id)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        return True


class _OneLine(logging.Filter):
    """Optuna's backoff logs each retry with a traceback: one line each, at warning level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            reason = _reason(record.exc_info[1])
            record.msg = f"artifact store: {record.getMessage()}: {reason}; retrying"
            record.args = None
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("optuna.artifacts._backoff").addFilter(_OneLine())


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def is_remote(url: str) -> bool:
    """Whether ``url`` names a bucket rather than a folder."""
    return url.startswith((S3_PREFIX, GS_PREFIX))


def join(url: str, *parts: str) -> str:
    """``url`` with ``parts`` appended as path segments."""
    if is_remote(url):
        return "/".join([url.rstrip("/"), *parts])
    return str(Path(url).joinpath(*parts))


def check_url(url: str) -> None:
    """Refuse a store URL this version cannot use, before anything is trained.

    Raises:
        ConfigError: credentials in the URL, a bucket URL without a bucket, another scheme.
    """
    if is_remote(url):
        scheme = url.split("://", 1)[0]
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        if "@" in bucket or ":" in bucket:
            raise ConfigError(
                "--artifacts: credentials never go in the URL; boto3 reads them from AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, ~/.aws or the machine's role, Google's client from Application Default "
                "Credentials"
            )
        if not bucket:
            raise ConfigError(f"--artifacts {url}: name a bucket, as in {scheme}://bucket/prefix")
    elif "://" in url:
        raise ConfigError(f"--artifacts {url}: a folder, s3://bucket/prefix or gs://bucket/prefix")


class Artifacts:
    """One study's part of an artifact store.

    Args:
        url: A folder, ``s3://bucket/prefix`` or ``gs://bucket/prefix``.
        retries: Tries of each call before it fails (:data:`RETRIES`).
    """

    def __init__(self, url: str, *, retries: int = RETRIES) -> None:
        check_url(url)
        self.url = url.rstrip("/") if is_remote(url) else str(Path(url))
        backend: _Folder | _Bucket | Any
        if is_remote(url):
            bucket, _, prefix = url.split("://", 1)[1].partition("/")
            self._prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
            backend = _Bucket(bucket, client=_s3_client()) if url.startswith(S3_PREFIX) else _gcs_bucket(bucket)
        else:
            self._prefix = ""
            backend = _Folder(Path(url))
        self._backend = backend
        self._store = Backoff(backend, max_retries=retries)
        self._retries = retries

    @property
    def folder(self) -> Path | None:
        """The store's folder on this machine, ``None`` for a bucket."""
        return None if is_remote(self.url) else Path(self.url)

    def where(self, key: str) -> str:
        """Where ``key`` is, for messages."""
        return join(self.url, key)

    def _call(self, what: str, key: str, fn: Any, *args: Any) -> Any:
        """``fn`` on ``key``; its failure, once the backoff gives up, as one :class:`ArtifactStoreError`."""
        try:
            return fn(self._prefix + key, *args)
        except ArtifactNotFound:
            raise
        except Exception as exc:
            tries = f" after {self._retries} tries" if getattr(fn, "__self__", None) is self._store else ""
            raise ArtifactStoreError(
                f"artifact store {self.url}: could not {what} {key}{tries}: {_reason(exc)}"
            ) from None

    def put(self, key: str, data: bytes) -> str:
        """Write ``data`` at ``key`` (whole or not at all); its sha256."""
        self._call("write", key, self._store.write, io.BytesIO(data))
        return hashlib.sha256(data).hexdigest()

    def get(self, key: str) -> bytes | None:
        """The bytes at ``key``; ``None`` when there are none."""
        try:
            reader = self._call("read", key, self._store.open_reader)
        except ArtifactNotFound:
            return None
        with reader:
            try:
                data: bytes = reader.read()
            except Exception as exc:
                raise ArtifactStoreError(f"artifact store {self.url}: reading {key} failed: {_reason(exc)}") from None
        return data

    def remove(self, key: str) -> None:
        """Remove ``key``, if it is there."""
        with contextlib.suppress(ArtifactNotFound):
            self._call("remove", key, self._store.remove)

    def remove_all(self, prefix: str) -> None:
        """Remove every key under ``prefix``."""
        for key in self.keys(prefix):
            self.remove(key)

    def keys(self, prefix: str = "") -> list[str]:
        """The keys under ``prefix``, relative to the study's part of the store."""
        try:
            found = self._backend.keys(self._prefix + prefix)
        except Exception as exc:
            raise ArtifactStoreError(
                f"artifact store {self.url}: could not list {prefix or 'it'}: {_reason(exc)}"
            ) from None
        return [k[len(self._prefix) :] for k in found]

    def check_writable(self) -> None:
        """Write, read back and remove a small file, so that a store that refuses writes fails now.

        Raises:
            ArtifactStoreError: it cannot be written, read or reached; the message says which.
        """
        key = f".probe-{uuid.uuid4().hex[:12]}"
        try:
            self._backend.write(self._prefix + key, io.BytesIO(b"autoprune"))
            with self._backend.open_reader(self._prefix + key) as reader:
                reader.read()
            self._backend.remove(self._prefix + key)
        except Exception as exc:
            raise ArtifactStoreError(
                f"artifact store {self.url} cannot be written from this machine: {_reason(exc)}; "
                "check the bucket or folder, its permissions and the credentials boto3 finds"
            ) from None

    # the front's weights

    def put_weights(self, number: int, data: bytes) -> str:
        """Trial ``number``'s fine-tuned weights; their sha256."""
        return self.put(weights_key(number), data)

    def weights(self, number: int) -> bytes | None:
        """Trial ``number``'s kept weights, ``None`` when they are not kept."""
        return self.get(weights_key(number))

    def has_weights(self, number: int) -> bool:
        return bool(self._call("look for", weights_key(number), self._backend.exists))

    def weight_numbers(self) -> set[int]:
        """The trials whose weights the store holds."""
        return set(_numbers(self.keys("trial-")))

    def remove_weights(self, number: int) -> None:
        self.remove(weights_key(number))


def weights_key(number: int) -> str:
    """The key of trial ``number``'s fine-tuned weights."""
    return f"trial-{number}.pt"


def _numbers(keys: list[str]) -> Iterator[int]:
    for key in keys:
        name = key.removeprefix("trial-").removesuffix(".pt")
        if "/" not in key and key.endswith(".pt") and name.isdigit():
            yield int(name)


def _gcs_bucket(bucket: str) -> Any:
    """Optuna's Google Cloud Storage store of ``bucket``, listing keys too."""
    try:
        from optuna.artifacts import GCSArtifactStore
        from optuna.exceptions import ExperimentalWarning
    except ImportError:  # pragma: no cover - Optuna has both since 3.4
        raise ConfigError("a gs:// artifact store needs optuna >= 3.4") from None
    try:
        import google.cloud.storage  # noqa: F401
    except ImportError:
        raise ConfigError("a gs:// artifact store needs google-cloud-storage: pip install 'autoprune[gcs]'") from None

    class GcsBucket(GCSArtifactStore):
        def keys(self, prefix: str) -> list[str]:
            return [blob.name for blob in self.client.list_blobs(self.bucket_name, prefix=prefix)]

        def exists(self, artifact_id: str) -> bool:
            return self.bucket_obj.get_blob(artifact_id) is not None

        def remove(self, artifact_id: str) -> None:
            from google.api_core.exceptions import NotFound

            try:
                super().remove(artifact_id)
            except NotFound:  # gone already: not a fault to retry
                raise ArtifactNotFound(artifact_id) from None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # Optuna marks its GCS store experimental
        return GcsBucket(bucket)


def _s3_client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError("an s3:// artifact store needs boto3: pip install 'autoprune[s3]'") from None
    # boto3 reads AWS_ENDPOINT_URL(_S3), credentials and region as it always does
    return boto3.client("s3", config=Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 2}))


__all__ = ["BASE_KEY", "RETRIES", "ArtifactStoreError", "Artifacts", "check_url", "is_remote", "join", "weights_key"]
