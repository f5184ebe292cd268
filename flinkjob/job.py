"""Builds the Flink job: Kafka sources → keyed user state + broadcast rules → Kafka sinks."""

from __future__ import annotations

import logging
import os
import site
import sys
from collections.abc import Mapping
from pathlib import Path

import orjson
from pyflink.common import Configuration, Types, WatermarkStrategy
from pyflink.common.serialization import SimpleStringSchema
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetsInitializer,
    KafkaRecordSerializationSchema,
    KafkaSink,
    KafkaSource,
)
from pyflink.java_gateway import get_gateway
from pyflink.util.java_utils import get_java_class

from flinkjob.operator import FEEDBACK, PROFILES, RULES, RuleEngineFunction
from flinkjob.settings import RuleEngineSettings, StateBackend
from server.domain.pipeline import record_key
from server.stores.topics import (
    REEVALUATIONS,
    RULE_DEFINITIONS,
    RULE_JOB_RULES_GROUP,
    RULE_JOB_USERS_GROUP,
    SEGMENT_MEMBERSHIP,
    USER_EVENTS,
    USER_PROFILES,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
# Where a bounded run stops: topic -> partition -> offset (exclusive). The live job is unbounded.
StopAt = Mapping[str, Mapping[int, int]]
log = logging.getLogger("rule-engine")
UNREADABLE = ""  # the key of keyed-input records without a user id


def prepare_python_environment() -> None:
    """Thread mode runs Python inside the JVM: it must find this virtualenv and this repository."""
    paths = [*site.getsitepackages(), str(REPO_ROOT)]
    existing = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, *([existing] if existing else [])])


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest completed `chk-N` (with its _metadata) across every job's folder."""
    candidates = [p.parent for p in folder.glob("*/chk-*/_metadata")]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def checkpoint_dir(state_dir: Path, backend: StateBackend) -> Path:
    """Each state backend's checkpoints apart: Flink restores a checkpoint only with the backend that wrote it.
    The heap's are where they always were."""
    return (state_dir / ("checkpoints" if backend == "hashmap" else f"checkpoints-{backend}")).resolve()


def state_backend(settings: RuleEngineSettings) -> StateBackend:
    """The backend asked for; unset, RocksDB, unless only the heap has checkpoints here (its state would be lost)."""
    if settings.state_backend is not None:
        return settings.state_backend
    heap_only = (newest_checkpoint(checkpoint_dir(settings.state_dir, "hashmap")) is not None
                 and newest_checkpoint(checkpoint_dir(settings.state_dir, "rocksdb")) is None)
    if heap_only:
        log.info("keeping the job's state on the heap: this state dir's checkpoints are the heap's "
                 "(AM_STATE_BACKEND=rocksdb starts RocksDB with empty state)")
        return "hashmap"
    return "rocksdb"


def configuration(settings: RuleEngineSettings) -> Configuration:
    config = Configuration()
    for key, value in job_options(settings).items():
        config.set_string(key, value)
    return config


def job_options(settings: RuleEngineSettings) -> dict[str, str]:
    """The job's Flink configuration, with the newest checkpoint of its state backend to restore from."""
    backend = state_backend(settings)
    checkpoints = checkpoint_dir(settings.state_dir, backend)
    checkpoints.mkdir(parents=True, exist_ok=True)
    options = {
        "python.execution-mode": "thread",
        "python.executable": sys.executable,
        # bundles apply to process mode only: in thread mode each record's output goes out as it is made, and
        # 10 and 1000 measured the same (kept for a switch to process mode, where they bound the latency)
        "python.fn-execution.bundle.size": "10",
        "python.fn-execution.bundle.time": "5",
        # records cross the keyBy exchange in network buffers, flushed when full or after this long
        # (Flink's default, 100 ms, would be most of the end-to-end latency at modest rates)
        "execution.buffer-timeout.interval": "10ms",
        "metrics.fetcher.update-interval": "2000",  # the REST API's view of job metrics (default 10 s)
        "rest.port": str(settings.flink_ui_port),
        "rest.bind-port": str(settings.flink_ui_port),
        "rest.bind-address": settings.host,
        "rest.address": settings.host,
        "execution.checkpointing.interval": f"{settings.checkpoint_interval_ms}ms",
        "execution.checkpointing.dir": checkpoints.as_uri(),
        "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
        "execution.checkpointing.num-retained": "2",
        "state.backend.type": backend,
        # RocksDB uploads only the files that changed since the last checkpoint (the heap has no such mode)
        "execution.checkpointing.incremental": str(backend == "rocksdb").lower(),
        # a new user is a read of a key that is not there: without a bloom filter RocksDB looks through every level
        # for it (measured: the state read was ~90% of the operator's time at 400,000 users, ~330 events/s)
        "state.backend.rocksdb.use-bloom-filter": "true",
        # source offsets of an older broker epoch are left behind; keyed and broadcast state restore
        "execution.state-recovery.ignore-unclaimed-state": "true",
        "parallelism.default": str(settings.parallelism),
        "taskmanager.memory.process.size": "1024m",
        "taskmanager.numberOfTaskSlots": "2",
    }
    if settings.flink_jobmanager:  # submit to a session cluster; its own config sizes the TaskManagers
        host, _, port = settings.flink_jobmanager.partition(":")
        options.update({"execution.target": "remote", "rest.address": host, "rest.port": port or "8081"})
    else:  # RocksDB's working files beside the checkpoints, not in /tmp (`amctl down --purge` removes them)
        options["state.backend.rocksdb.localdir"] = str((settings.state_dir / "rocksdb").resolve())
    restore = newest_checkpoint(checkpoints)
    if restore is not None:
        log.info("restoring from checkpoint %s", restore)
        options["execution.state-recovery.path"] = restore.as_uri()
    return options


def environment(config: Configuration) -> StreamExecutionEnvironment:
    """The execution environment `config` names: a local mini-cluster, or (`execution.target: remote`) a session
    cluster. `get_execution_environment` would run a local mini-cluster whatever the target says (Java's
    `getExecutionEnvironment` outside a `flink run` client makes a LocalStreamEnvironment, which sets the target
    back to local), so a remote target gets an environment built on the configuration as it is."""
    if config.get_string("execution.target", "local") != "remote":
        return StreamExecutionEnvironment.get_execution_environment(config)
    jvm = get_gateway().jvm
    return StreamExecutionEnvironment(
        jvm.org.apache.flink.streaming.api.environment.StreamExecutionEnvironment(config._j_configuration))


def source(settings: RuleEngineSettings, group: str, *topics: str, stop_at: StopAt | None = None) -> KafkaSource:
    # Offsets restored from a checkpoint come first. Without them (a new broker epoch) the live job starts
    # where it last committed on this broker: nowhere on a fresh one (so from the start), but a durable
    # broker it comes back to still holds what an earlier run already applied. Bounded runs read it all.
    starting = KafkaOffsetsInitializer.earliest() if stop_at is not None else _committed_or_earliest()
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap)
        .set_topics(*topics)
        .set_group_id(settings.topic_prefix + group)  # committed on each checkpoint
        .set_starting_offsets(starting)
        .set_value_only_deserializer(SimpleStringSchema())
        .set_property("fetch.max.wait.ms", "10")
        .set_property("partition.discovery.interval.ms", "60000")
    )
    if stop_at is not None:
        builder.set_bounded(_offsets({t: stop_at[t] for t in topics}))
    return builder.build()


def _committed_or_earliest() -> KafkaOffsetsInitializer:
    """`KafkaOffsetsInitializer.committed_offsets(EARLIEST)`, for the unshaded Kafka client classes here."""
    jvm = get_gateway().jvm
    initializer = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer
    earliest = jvm.org.apache.kafka.clients.consumer.OffsetResetStrategy.EARLIEST
    return KafkaOffsetsInitializer(initializer.committedOffsets(earliest))


def _offsets(at: StopAt) -> KafkaOffsetsInitializer:
    """`KafkaOffsetsInitializer.offsets`, for the unshaded Kafka client classes of the connector jars here
    (PyFlink's own helper names the shaded ones of the SQL connector jar)."""
    jvm = get_gateway().jvm
    offsets = jvm.org.apache.flink.python.util.HashMapWrapper(None, get_java_class(jvm.Long))
    for topic, partitions in at.items():
        for partition, offset in partitions.items():
            offsets.put(jvm.org.apache.kafka.common.TopicPartition(topic, partition), offset)
    initializer = jvm.org.apache.flink.connector.kafka.source.enumerator.initializer.OffsetsInitializer
    return KafkaOffsetsInitializer(initializer.offsets(offsets.asMap()))


def sink(settings: RuleEngineSettings, topic: str) -> KafkaSink:
    records = KafkaRecordSerializationSchema.builder().set_topic(topic) \
        .set_value_serialization_schema(SimpleStringSchema())
    # Records carry no key, so without this the producer would spread one user's records over every
    # partition and consumers could read them out of order. Each sink subtask writes to one partition
    # instead, and a user's records all come from the subtask that owns the user (keyBy, then forward).
    records._j_builder.setPartitioner(get_gateway().jvm.org.apache.flink.streaming.connectors.kafka.partitioner
                                      .FlinkFixedPartitioner())
    builder = (
        KafkaSink.builder()
        .set_bootstrap_servers(settings.kafka_bootstrap)
        .set_record_serializer(records.build())
        .set_delivery_guarantee(DeliveryGuarantee.AT_LEAST_ONCE)
        .set_property("linger.ms", "5")
        # one partition per subtask and, without idempotence, one request in flight: a backlog must leave in
        # few large requests (Kafka's 16 KB default held ~14 membership changes a request, ~1,000 a second)
        .set_property("batch.size", str(512 * 1024))
    )
    if not settings.kafka_idempotence:  # as the services' producers (server.stores.kafka.NON_IDEMPOTENT)
        builder.set_property("enable.idempotence", "false").set_property("max.in.flight.requests.per.connection", "1")
    return builder.build()


def user_key(value: str) -> str:
    """The user a keyed-input record is for (`record_key`); a record without one is keyed `UNREADABLE`
    (the operator skips it)."""
    try:
        user = record_key(orjson.loads(value))
    except orjson.JSONDecodeError:
        return UNREADABLE
    return user if user is not None else UNREADABLE


def build(settings: RuleEngineSettings, stop_at: StopAt | None = None) -> StreamExecutionEnvironment:
    """The whole pipeline on an execution environment, ready for `execute_async`.

    With `stop_at` the sources end at those offsets, so `execute()` returns (benchmarks use this).
    """
    prepare_python_environment()
    env = environment(configuration(settings))
    topic = settings.topic
    epoch = settings.broker_epoch  # offsets belong to one broker epoch: a new epoch reads from the start
    keyed = env.from_source(source(settings, RULE_JOB_USERS_GROUP, topic(USER_EVENTS), topic(REEVALUATIONS),
                                   stop_at=stop_at),
                            WatermarkStrategy.no_watermarks(), "user-events").uid(f"user-events-{epoch}")
    rules = env.from_source(source(settings, RULE_JOB_RULES_GROUP, topic(RULE_DEFINITIONS), stop_at=stop_at),
                            WatermarkStrategy.no_watermarks(), "segment-rules").uid(f"segment-rules-{epoch}")
    changes = (
        keyed.key_by(user_key, key_type=Types.STRING())
        .connect(rules.broadcast(RULES))
        .process(RuleEngineFunction(settings.history_lookback), output_type=Types.STRING())
        .name("evaluate-rules")
        .uid("evaluate-rules")
    )
    changes.sink_to(sink(settings, topic(SEGMENT_MEMBERSHIP))).name("segment-membership").uid("membership-sink")
    changes.get_side_output(PROFILES).sink_to(sink(settings, topic(USER_PROFILES))).name("user-profiles") \
        .uid("profile-sink")
    # merges, events for linked anonymous ids and forgets go to their own keys through the keyed input
    changes.get_side_output(FEEDBACK).sink_to(sink(settings, topic(REEVALUATIONS))).name("feedback") \
        .uid("feedback-sink")
    return env
