"""A throwaway S3-compatible server (moto's, behind ``s3_server``'s upload checks) for the tests,
chat-dev and chat-bench, with its bucket made.

moto installs from PyPI as a dev-only dependency (``moto[server]``), so no binary is fetched and
nothing outside the package registries is needed; it keeps objects in memory, which suits a
server that lives as long as a test session. ``s3_server`` says what it adds to moto.
"""

from __future__ import annotations

import os
import sys
from typing import Self

from chat_devtools.local_server import LocalServer
from chat_devtools.ports import LOOPBACK
from chat_devtools.process import ServiceProcess, http_get

DEV_ACCESS_KEY_ID = "chat-dev"
DEV_SECRET_ACCESS_KEY = "chat-dev-secret-key"  # noqa: S105 - a throwaway local server's key
DEV_BUCKET = "chat-attachments"
DEV_REGION = "us-east-1"


class LocalS3(LocalServer):
    """An S3 server on a loopback port of its own, with ``bucket`` created at start.

    Args:
        port: the port to try first (default: a candidate; the first ``start`` moves on to
            others while a port is taken).
        attempts: how many ports the first ``start`` tries.
    """

    def __init__(self, port: int | None = None, attempts: int = 5, *,
                 bucket: str = DEV_BUCKET) -> None:
        super().__init__(port, attempts)
        self.bucket = bucket
        self.access_key_id = DEV_ACCESS_KEY_ID
        self.secret_access_key = DEV_SECRET_ACCESS_KEY
        self.region = DEV_REGION

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def env(self) -> dict[str, str]:
        """The API's settings for this server."""
        return {"S3_ENDPOINT": self.endpoint, "S3_REGION": self.region, "S3_BUCKET": self.bucket,
                "S3_ACCESS_KEY_ID": self.access_key_id,
                "S3_SECRET_ACCESS_KEY": self.secret_access_key, "S3_PATH_STYLE": "true"}

    def start(self, timeout: float = 30.0) -> Self:
        """Starts the server, waits until it answers, and creates the bucket (again after a
        restart: the server keeps its objects in memory only).

        Raises:
            PortInUse: every port tried was taken.
            ServiceError: the server exited or did not become ready.
        """
        self._start_on_a_port(timeout)
        self.create_bucket()
        return self

    def _process(self, port: int) -> ServiceProcess:
        return ServiceProcess(
            "s3", [sys.executable, "-m", "chat_devtools.s3_server", "--host", LOOPBACK,
                   "--port", str(port)],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                 "S3_SECRET_ACCESS_KEY": self.secret_access_key},
            ready=lambda _proc: http_get(port, "/", timeout=1.0)[0] == 200)

    def client(self) -> object:
        """A boto3 client for this server (synchronous: for fixtures and set-up only)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 1}))

    def create_bucket(self) -> None:
        self.client().create_bucket(Bucket=self.bucket)  # type: ignore[attr-defined]

    def empty_bucket(self) -> None:
        """Deletes every object (a test starts with an empty bucket)."""
        client = self.client()
        listed = client.list_objects_v2(Bucket=self.bucket)  # type: ignore[attr-defined]
        for obj in listed.get("Contents", []):
            client.delete_object(Bucket=self.bucket, Key=obj["Key"])  # type: ignore[attr-defined]

    def cleanup(self) -> None:
        self.stop()
