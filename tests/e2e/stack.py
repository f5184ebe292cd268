"""Running amctl and whole local stacks from tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from amctl.local import processes

PORT_NAMES = ("segment_api", "ingestion_api", "communication_api", "rule_engine", "email_worker", "delivery_worker",
              "postgres", "kafka", "flink_ui", "flink_rpc", "prometheus", "smtp", "webhook_sink", "s3")


def amctl(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amctl", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def stack_environment(state: Path) -> dict[str, str]:
    # the tests read topics after the fact (`read_topic`): the broker keeps what was read for an hour
    env = {**os.environ, "AMCTL_STATE_DIR": str(state), "NO_COLOR": "1", "COLUMNS": "200",
           "AMCTL_BROKER_KEEP_S": "3600"}
    taken: list[int] = []
    for name in PORT_NAMES:
        taken.append(processes.service_port(taken=taken))
        env[f"AMCTL_PORT_{name.upper()}"] = str(taken[-1])
    return env


class Stack:
    """A running stack and HTTP clients for its services."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        port = lambda name: int(env[f"AMCTL_PORT_{name.upper()}"])  # noqa: E731
        self.segments = httpx.Client(base_url=f"http://127.0.0.1:{port('segment_api')}", timeout=10)
        self.events = httpx.Client(base_url=f"http://127.0.0.1:{port('ingestion_api')}", timeout=10)
        self.campaigns = httpx.Client(base_url=f"http://127.0.0.1:{port('communication_api')}", timeout=10)
        self.rule_engine = httpx.Client(base_url=f"http://127.0.0.1:{port('rule_engine')}", timeout=10)
        self.database_url = f"postgresql://postgres@127.0.0.1:{port('postgres')}/audience"

    def close(self) -> None:
        for client in (self.segments, self.events, self.campaigns, self.rule_engine):
            client.close()


@contextmanager
def started_stack(env: dict[str, str], *up_args: str, timeout: float = 180) -> Iterator[Stack]:
    """`amctl up` with `env`; always `amctl down --purge` afterwards (the data may live outside tmp)."""
    up = amctl(env, "up", *up_args, timeout=timeout)
    if up.returncode != 0:
        amctl(env, "down", "--purge")
        pytest.fail(f"amctl up {' '.join(up_args)} failed:\n{up.stdout}\n{up.stderr}")
    stack = Stack(env)
    try:
        yield stack
    finally:
        stack.close()
        amctl(env, "down", "--purge")


def component(stack: Stack, name: str) -> dict[str, Any]:
    """One component's row of `amctl status --json` (state, pid, port, ...)."""
    rows = json.loads(amctl(stack.env, "status", "--json").stdout)
    return next(r for r in rows if r["name"] == name)


def eventually(check: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"{what} did not hold within {timeout_s} s; last seen: {last!r}")


def signal_component(stack: Stack, name: str, sig: int, when: Callable[[], bool] = lambda: True) -> None:
    """Once `when` holds, signal a component's process group (as a crash or a supervisor would) and
    wait until it is gone."""
    pgid = os.getpgid(int(str(component(stack, name)["pid"])))
    eventually(when, timeout_s=30, what=f"the moment to signal {name}")
    os.killpg(pgid, sig)
    eventually(lambda: component(stack, name)["state"] == "stopped", timeout_s=30, what=f"{name} has stopped")


def up_again(stack: Stack, name: str) -> None:
    """A plain `amctl up`, which must bring `name` back healthy."""
    up = amctl(stack.env, "up")
    assert up.returncode == 0, up.stderr
    assert name in up.stderr and "healthy" in up.stderr, up.stderr


def read_topic(stack: Stack, topic: str, keep: Callable[[Message], bool] = lambda _: True, expected: int = 0,
               quiet_s: float = 2.0, timeout_s: float = 60.0) -> list[Message]:
    """The records of `topic` that `keep` accepts, read from offset 0 of every partition until at least
    `expected` are kept and none was kept for `quiet_s` (the local broker's high watermark cannot be
    trusted to say where the topic ends), or `timeout_s` passed."""
    consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{stack.env['AMCTL_PORT_KAFKA']}",
                         "group.id": f"test-reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        kept: list[Message] = []
        started = time.monotonic()
        deadline, last_kept = started + timeout_s, started
        while time.monotonic() < deadline and (len(kept) < expected or time.monotonic() - last_kept < quiet_s):
            message = consumer.poll(0.2)
            if message is None or message.error() or not keep(message):
                continue
            kept.append(message)
            last_kept = time.monotonic()
        return kept
    finally:
        consumer.close()
