"""Settings of the rule engine process (AM_* like every service, plus the Flink-specific ones)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field

from server.domain.profile import HISTORY_LOOKBACK
from server.runtime.settings import ServiceSettings

StateBackend = Literal["hashmap", "rocksdb"]


class RuleEngineSettings(ServiceSettings):
    """`AM_PORT` is the health/metrics port (30084); `AM_FLINK_UI_PORT` the Flink web UI (30881)."""

    port: int = 30084
    flink_ui_port: int = Field(default=30881, description="Flink REST API and web UI")
    flink_jobmanager: str = Field(default="", description="host:port of a Flink cluster's REST API (Kubernetes): "
                                  "the job runs there instead of on a local mini-cluster")
    state_dir: Path = Field(default=Path(".amctl/rule-engine"), description="Checkpoints and feeder progress")
    checkpoint_interval_ms: int = 5000
    state_backend: StateBackend | None = Field(
        default=None, description="Where the job keeps its keyed state: `rocksdb` (serialized, on local disk with a "
        "bounded cache; incremental checkpoints) or `hashmap` (objects on the JVM heap). Unset: RocksDB, unless the "
        "state dir holds only the heap's checkpoints (a stack made before RocksDB was the default keeps its state)")
    parallelism: int = 1
    broker_epoch: str = Field(default="0", description="Changes when the broker lost its data (the local "
                              "memory broker restarted): Kafka offsets in a checkpoint are then not restored")
    writer_batch: int = 1000
    backfill_page: int = 1000
    # A re-evaluation costs the job about what an event does (~3,000/s with 20 segments on 2 shared cores): 1,000/s
    # leaves live events most of it. The scan parses each stored profile in the rule engine, beside the writer:
    # 10,000/s reads 100,000 profiles in 10 s, about as long as their 7,500 matches take to send.
    backfill_rate: float = Field(default=1000, ge=0, description="Re-evaluation requests per second a backfill "
                                 "sends at most, so live events keep the job's headroom (0: no limit)")
    backfill_scan_rate: float = Field(default=10000, ge=0, description="Stored profiles per second a backfill "
                                      "reads and matches at most (it shares the cores with the job; 0: no limit)")
    history_lookback: timedelta = Field(
        default=HISTORY_LOOKBACK, gt=timedelta(0),
        description="How long each user's event history is kept (ISO-8601, e.g. P30D), whatever the live rules "
                    "look at, so a rule written later sees that far back; a rule's longer window wins")
