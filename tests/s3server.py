"""Real S3-compatible and Google Cloud Storage HTTP servers for the artifact store's tests, on
127.0.0.1: moto's server mode, and gcp-storage-emulator.

moto's buckets live in this process's memory, so a server stopped and started again on the same port
(:meth:`S3Server.outage`) comes back with every object it held, as a real store after a network cut.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class S3Server:
    """moto's S3 server on a free port of 127.0.0.1; :attr:`env` is what a process needs to reach it."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}
        self._make = lambda: ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server = self._make()
        self._server.start()

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, **_lower(CREDENTIALS))

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"bkt-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        data: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
        return data

    def stop(self) -> None:
        self._server.stop()

    def start(self) -> None:
        self._server = self._make()
        self._server.start()

    @contextlib.contextmanager
    def checking_credentials(self) -> Iterator[None]:
        """Every request authenticated against the server's IAM users (none: every key is unknown)."""
        previous = self._reset_auth(0)
        try:
            yield
        finally:
            self._reset_auth(previous)

    def _reset_auth(self, count: float) -> float:
        import requests  # moto's own dependency

        response = requests.post(f"{self.endpoint}/moto-api/reset-auth", data=str(count).encode(), timeout=10)
        previous: float = response.json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
        return previous

    def outage(self, seconds: float) -> None:
        """The server gone for ``seconds``, then back with what it held."""
        self.stop()
        try:
            time.sleep(seconds)
        finally:
            self.start()


def _lower(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``env`` set, restored afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class GcsServer:
    """gcp-storage-emulator's Google Cloud Storage server on a free port of 127.0.0.1, in memory;
    :attr:`env` points Google's client at it (``STORAGE_EMULATOR_HOST``: anonymous credentials)."""

    def __init__(self) -> None:
        from gcp_storage_emulator.server import create_server

        self.port = free_port()
        self.env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.port}"}
        self._server = create_server("127.0.0.1", self.port, in_memory=True)
        self._server.start()

    def bucket(self) -> str:
        """A new, empty bucket."""
        from google.cloud import storage

        name = f"bkt-{uuid.uuid4().hex[:12]}"
        with environment(self.env):
            storage.Client().create_bucket(name)
        return name

    def stop(self) -> None:
        self._server.stop()
