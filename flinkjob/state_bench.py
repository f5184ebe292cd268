"""The rule job's keyed state on each state backend (`amctl bench` stage `state_backends`).

For each number of users, one event per user is written to a topic prefix of its own and the live job (unbounded,
the rule engine's own pipeline with the job bench's 20 segments) runs on a local mini-cluster in this process with
each backend in turn, so every user has state at the end. Measured per run, from the Flink REST API:
- `events_per_s`: the operator's eventsProcessed over the time from the first to the last event applied;
- the first checkpoint completed after the last event: `checkpoint_state_bytes` (the whole state),
  `checkpoint_uploaded_bytes` (what that checkpoint wrote: all of it on the heap, the changed files on RocksDB)
  and `checkpoint_s` (trigger to last acknowledgement), and `state_bytes_per_user` from it;
- `jvm_heap_used_bytes` and `jvm_rss_bytes` of the JVM running the job, once that checkpoint is done.

Heap runs stop at `heap_users_max` users and say so beyond it: at the heap's bytes per user (measured at 100,000)
a million users need several GiB of heap, more than any TaskManager this project sizes.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil

from flinkjob.bench import _definitions, _events, _produce
from flinkjob.job import build, prepare_python_environment
from flinkjob.metrics import OPERATOR, operator_vertex
from flinkjob.settings import RuleEngineSettings
from server.stores.kafka import create_topics
from server.stores.topics import RULE_DEFINITIONS, USER_EVENTS

SEGMENTS = 20
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _jvm_rss() -> int:
    """RSS of the JVM that PyFlink started for this process (the mini-cluster runs in it)."""
    children = psutil.Process().children(recursive=True)
    return sum(c.memory_info().rss for c in children if "java" in c.name())


class _Job:
    """The running job's operator counters, checkpoints and TaskManager memory, over the REST API."""

    def __init__(self, rest: str, job_id: str) -> None:
        self.http = httpx.Client(base_url=rest, timeout=10.0)
        self.job_id = job_id

    def applied(self) -> int:
        vertex = operator_vertex(self.http.get(f"/jobs/{self.job_id}").json())
        if vertex is None:
            return 0
        rows = self.http.get(f"/jobs/{self.job_id}/vertices/{vertex}/subtasks/metrics",
                             params={"get": f"{OPERATOR}.eventsProcessed", "agg": "sum"}).json()
        return int(float(rows[0]["sum"])) if rows else 0

    def latest_checkpoint(self) -> dict[str, Any] | None:
        latest = self.http.get(f"/jobs/{self.job_id}/checkpoints").json().get("latest") or {}
        return latest.get("completed")

    def heap_used(self) -> int:
        managers = self.http.get("/taskmanagers").json()["taskmanagers"]
        rows = self.http.get(f"/taskmanagers/{managers[0]['id']}/metrics",
                             params={"get": "Status.JVM.Memory.Heap.Used"}).json()
        return int(float(rows[0]["value"])) if rows else 0


def _or(read: Callable[[], T], last: T) -> T:
    """A reading of the REST API, or the last one while it does not answer (a busy JobManager can take seconds)."""
    try:
        return read()
    except (httpx.HTTPError, ValueError):
        return last


def _run(settings: RuleEngineSettings, users: int, timeout_s: float) -> dict[str, Any]:
    env = build(settings)
    client = env.execute_async(f"bench-state-{settings.state_backend}")
    job = _Job(f"http://127.0.0.1:{settings.flink_ui_port}", str(client.get_job_id()))
    try:
        deadline = time.monotonic() + timeout_s
        first: tuple[float, int] | None = None
        applied = 0
        while applied < users:
            if time.monotonic() > deadline:
                return {"failed": f"{applied:,} of {users:,} events applied within {timeout_s:.0f} s"}
            time.sleep(1.0)
            applied = _or(job.applied, applied)
            if first is None and applied > 0:
                first = (time.monotonic(), applied)
        done = time.time()
        assert first is not None
        per_s = (applied - first[1]) / max(time.monotonic() - first[0], 1e-3)
        checkpoint = job.latest_checkpoint()
        while checkpoint is None or checkpoint["latest_ack_timestamp"] / 1000 < done:
            if time.monotonic() > deadline:
                return {"failed": f"no checkpoint completed within {timeout_s:.0f} s of the start"}
            time.sleep(1.0)
            checkpoint = _or(job.latest_checkpoint, checkpoint)
        return {
            "events_per_s": round(per_s),
            "checkpoint_state_bytes": checkpoint["state_size"],
            "checkpoint_uploaded_bytes": checkpoint["checkpointed_size"],
            "checkpoint_s": round(checkpoint["end_to_end_duration"] / 1000, 2),
            "state_bytes_per_user": round(checkpoint["state_size"] / users),
            "jvm_heap_used_bytes": job.heap_used(),
            "jvm_rss_bytes": _jvm_rss(),
        }
    finally:
        job.http.close()
        client.cancel().result()


def measure_state_backends(users: tuple[int, ...] = (100_000, 1_000_000),
                           backends: tuple[str, ...] = ("hashmap", "rocksdb"), heap_users_max: int = 100_000,
                           timeout_s: float = 1800.0) -> dict[str, Any]:
    """Per number of users and backend: the figures of the module docstring, keyed `<backend>_<users>`."""
    bootstrap = os.environ["AM_KAFKA_BOOTSTRAP"]
    prepare_python_environment()
    figures: dict[str, Any] = {"segments": SEGMENTS}
    for count in users:
        events = _events(count, count, each_once=True)
        for backend in backends:
            key = f"{backend}_{count}"
            if backend == "hashmap" and count > heap_users_max:
                figures[key] = {"skipped": f"the heap is measured up to {heap_users_max:,} users"}
                continue
            # topics of its own: a run commits its offsets, and the next would start where it stopped
            prefix = f"bench-state-{uuid.uuid4().hex[:8]}-"
            create_topics(bootstrap, prefix)
            _produce(bootstrap, prefix + RULE_DEFINITIONS, _definitions(SEGMENTS))
            _produce(bootstrap, prefix + USER_EVENTS, events)
            with tempfile.TemporaryDirectory(prefix="amctl-state-bench-") as state:
                settings = RuleEngineSettings(kafka_bootstrap=bootstrap, topic_prefix=prefix, state_dir=Path(state),
                                              flink_ui_port=_free_port(), state_backend=backend)  # type: ignore[arg-type]
                figures[key] = _run(settings, count, timeout_s)
    return figures
