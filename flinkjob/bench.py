"""Throughput of the rule job beside a no-op PyFlink job reading the same topic (`amctl bench` runs it).

Both read the same prepared records on a topic prefix of their own, as bounded jobs on a local
mini-cluster in this process, with the live job's configuration (thread mode, bundle size, sinks):
- **rules**: the rule engine's own pipeline (`job.build`) with 20 active segments;
- **no-op**: the same source and `key_by`, a Python identity map, the same Kafka sink.

After one discarded warm-up run, each is run twice, over a few records and over all of them;
throughput is the difference in records over the difference in wall time, so job start-up (tasks,
Python workers) cancels out. The two jobs take turns for a few rounds and the figures are the medians:
on a shared machine one round's no-op figure can be off several times over (a one-second difference of
two runs), and a ratio is only fair between runs that saw the same load.
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer
from pyflink.common import Types, WatermarkStrategy
from pyflink.datastream import StreamExecutionEnvironment

from flinkjob.job import StopAt, build, configuration, prepare_python_environment, sink, source, user_key
from flinkjob.logic import UserState, compile_definition, on_event
from flinkjob.settings import RuleEngineSettings
from server.domain.bench import RULES, bench_segment_id
from server.domain.events import UserEvent
from server.domain.membership import RuleSet
from server.domain.segment import SegmentDefinition
from server.stores.kafka import create_topics
from server.stores.records import encode
from server.stores.topics import REEVALUATIONS, RULE_DEFINITIONS, SEGMENT_MEMBERSHIP, USER_EVENTS

WARMUP_PER_PARTITION = 25


def _produce(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> dict[int, int]:
    """Write records; returns each partition's end offset (exclusive)."""
    ends: dict[int, int] = defaultdict(int)
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))
        else:
            ends[msg.partition()] = max(ends[msg.partition()], msg.offset() + 1)

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10_000,
                         "enable.idempotence": True})
    for key, value in records:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60) or failures:
        raise RuntimeError(f"could not prepare {topic}: {failures[:1] or 'flush timed out'}")
    return dict(ends)


def _events(count: int, users: int, each_once: bool = False) -> list[tuple[str, bytes]]:
    """A purchase-heavy mix over `users` users, as the Ingestion API would have written it (`each_once`: the
    i-th event is user i's, so `count` events make `count` users)."""
    rng, now = random.Random(7), datetime.now(UTC)
    records = []
    for index in range(count):
        user = f"bench-user-{index if each_once else rng.randrange(users)}"
        kind = rng.choice(("purchase", "page_view", "page_view"))
        properties: dict[str, Any] = {"category": rng.choice(("books", "electronics", "garden", "shoes")),
                                      "country": rng.choice(("DE", "FR", "US", "AT"))}
        if kind == "purchase":
            properties["amount"] = round(rng.uniform(5, 500), 2)
        event = UserEvent(user, kind, str(uuid.uuid4()), now, properties, received_at=now)
        records.append((user, encode(event)))
    return records


def _definitions(segments: int) -> list[tuple[str, bytes]]:
    ids = [bench_segment_id(i) for i in range(segments)]  # segment ids are UUIDs; the references point at two
    return [(sid, encode(SegmentDefinition(sid, 1, f"bench {i}", rules=RULES[i % len(RULES)])))
            for i, sid in enumerate(ids)]


def _passthrough(settings: RuleEngineSettings, stop_at: StopAt) -> StreamExecutionEnvironment:
    env = StreamExecutionEnvironment.get_execution_environment(configuration(settings))
    events = env.from_source(source(settings, "rule-engine-noop", settings.topic(USER_EVENTS), stop_at=stop_at),
                             WatermarkStrategy.no_watermarks(), "user-events")
    (events.key_by(user_key, key_type=Types.STRING())
     .map(lambda value: value, output_type=Types.STRING())
     .sink_to(sink(settings, settings.topic(SEGMENT_MEMBERSHIP))))
    return env


def _timed_run(kind: str, settings: RuleEngineSettings, stop_at: StopAt) -> float:
    # a state dir (checkpoints) per run: restoring an earlier run's checkpoint would resume at its offsets, and
    # a busy machine's run lasts long enough to take one (it then fails if its files go while the next starts)
    with tempfile.TemporaryDirectory(dir=settings.state_dir) as state:
        run = settings.model_copy(update={"state_dir": Path(state)})
        env = build(run, stop_at) if kind == "rules" else _passthrough(run, stop_at)
        started = time.perf_counter()
        env.execute(f"bench-{kind}")
        return time.perf_counter() - started


def measure_job_throughput(events: int = 60_000, segments: int = 20, users: int = 20_000,
                           rounds: int = 3) -> dict[str, Any]:
    """Events/s of the rule job and of the no-op job, each the median of `rounds` turns taken in alternation, and
    the median of each round's ratio (`rules_to_noop_ratio`); `*_runs` are the rounds' own figures."""
    bootstrap = os.environ["AM_KAFKA_BOOTSTRAP"]
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    create_topics(bootstrap, prefix)
    ends = _produce(bootstrap, prefix + USER_EVENTS, _events(events, users))
    rules_end = _produce(bootstrap, prefix + RULE_DEFINITIONS, _definitions(segments))
    warmup = {p: min(end, WARMUP_PER_PARTITION) for p, end in ends.items()}
    figures: dict[str, Any] = {"events": events, "segments": segments, "users": users, "rounds": rounds}
    prepare_python_environment()
    runs: dict[str, list[int]] = {"noop": [], "rules": []}
    with tempfile.TemporaryDirectory(prefix="amctl-job-bench-") as state:
        settings = RuleEngineSettings(kafka_bootstrap=bootstrap, topic_prefix=prefix, state_dir=Path(state),
                                      flink_ui_port=0)  # any free port: the live job's UI may be running
        warm_stop = {prefix + USER_EVENTS: warmup}
        _timed_run("noop", settings, warm_stop)  # the first job in a process also pays for the JVM's warm-up
        for _ in range(rounds):
            for kind, per_s in runs.items():
                timed = []
                for partitions in (warmup, ends):
                    stop_at = {prefix + USER_EVENTS: partitions, prefix + REEVALUATIONS: {p: 0 for p in range(4)},
                               prefix + RULE_DEFINITIONS: rules_end}
                    timed.append((sum(partitions.values()), _timed_run(kind, settings, stop_at)))
                (few, t_few), (many, t_many) = timed
                per_s.append(round((many - few) / max(t_many - t_few, 1e-3)))
                figures[f"{kind}_run_s"] = round(t_many, 2)
    for kind, per_s in runs.items():
        figures[f"{kind}_events_per_s"] = round(statistics.median(per_s))
        figures[f"{kind}_runs"] = per_s
    ratios = [rules / noop for rules, noop in zip(runs["rules"], runs["noop"], strict=True)]
    figures["rules_to_noop_ratio"] = round(statistics.median(ratios), 2)
    return figures


def measure_state_size(events: tuple[int, ...] = (10, 100, 1000), segments: int = 20) -> dict[str, Any]:
    """The rule job's state per user (the JSON it keeps in Flink: profile, history, memberships) after this many
    events of the job bench's mix, with the bench's segments live and the default lookback."""
    rules = RuleSet({d.id: rule for _, raw in _definitions(segments)
                     if (rule := compile_definition(d := SegmentDefinition.from_json(orjson.loads(raw)))) is not None})
    figures: dict[str, Any] = {"segments": segments, "lookback_days": rules.lookback.days}
    records = [orjson.loads(value) for _, value in _events(max(events), users=1)]
    state, now = UserState(), datetime.now(UTC)
    for count, record in enumerate(records, start=1):
        state = on_event(state, UserEvent.from_json(record), rules, now).state
        if count in events:
            figures[f"state_bytes_at_{count}_events"] = len(state.to_json().encode())
    assert state.profile is not None
    figures["history_entries_kept"] = sum(map(len, state.profile.history.values()))
    return figures
