"""The local S3 server the broker keeps its records in (`amctl.local.s3_server`): in memory by default, in files
under the state dir with `amctl up --durable-broker`. Either way the broker's records are dropped once every
group that reads their topic has committed past them (`server.stores.topics.READERS`) and they are older than
`broker_keep_s`, so the broker holds what is unread plus a short window, not everything ever sent.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from amctl.local.objects import RetentionPolicy
from server.stores.topics import READERS

BUCKET = "broker"
ACCESS_KEY = "amctl"  # the server does not authenticate (it listens on the loopback interface only)


def platform_retention(keep_for_s: float) -> RetentionPolicy:
    """The platform's readers, each topic's record kept at least `keep_for_s` seconds."""
    return RetentionPolicy({topic: frozenset(groups) for topic, groups in READERS.items()}, keep_for_s)


@dataclass(frozen=True)
class StoreFigures:
    """What the S3 server holds and what its retention dropped: per topic, batches and bytes held, records and
    batches dropped."""

    durable: bool
    objects: int
    topics: dict[str, dict[str, int]]

    @property
    def held_bytes(self) -> int:
        return sum(t["bytes"] for t in self.topics.values())

    @property
    def held_batches(self) -> int:
        return sum(t["batches"] for t in self.topics.values())

    @property
    def trimmed_records(self) -> int:
        return sum(t["trimmed_records"] for t in self.topics.values())


@dataclass(frozen=True)
class LocalS3Server:
    """One S3 server process: where its objects live (with `durable`), the port it listens on, what it keeps."""

    root: Path  # objects under root/objects, the storage epoch in root/epoch
    port: int
    host: str = "127.0.0.1"
    durable: bool = False
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)

    @property
    def objects_dir(self) -> Path:
        return self.root / "objects"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def storage_url(self) -> str:
        return f"s3://{BUCKET}/"

    def prepare(self) -> None:
        if self.durable:
            self.create_data_dir()

    def create_data_dir(self) -> None:
        """The objects' directory and, with a new one, a new epoch."""
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        epoch = self.root / "epoch"
        if not epoch.exists():
            epoch.write_text(uuid.uuid4().hex[:12])

    def epoch(self) -> str:
        """Changes only when the stored records are gone (a new data directory)."""
        try:
            return "s3-" + (self.root / "epoch").read_text().strip()
        except OSError:
            return "s3-new"

    def command(self) -> list[str]:
        retain = [arg for spec in self.retention.specs() for arg in ("--retain", spec)]
        where = ["--directory", str(self.objects_dir)] if self.durable else []
        return [sys.executable, "-m", "amctl.local.s3_server", "--host", self.host, "--port", str(self.port),
                "--bucket", BUCKET, *where, *retain, "--keep-for", f"{self.retention.keep_for_s:g}"]

    def client_environment(self) -> dict[str, str]:
        """What the broker's object store (Rust `object_store`, from the environment) needs to reach us."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": ACCESS_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def figures(self, timeout_s: float = 1.0) -> StoreFigures | None:
        """What the server holds, or None when it does not answer within `timeout_s`."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/_stats", timeout=timeout_s) as answer:
                body = json.loads(answer.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None
        return StoreFigures(bool(body["durable"]), int(body["objects"]), dict(body["topics"]))

    def ready(self) -> bool:
        return self.figures(timeout_s=0.5) is not None
