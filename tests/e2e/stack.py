"""Running amctl and whole local stacks from tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from amctl.local import processes

PORT_NAMES = ("segment_api", "ingestion_api", "communication_api", "rule_engine", "email_worker", "postgres",
              "kafka", "flink_ui", "prometheus", "smtp", "s3")


def amctl(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "amctl", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def stack_environment(state: Path) -> dict[str, str]:
    env = {**os.environ, "AMCTL_STATE_DIR": str(state), "NO_COLOR": "1", "COLUMNS": "200"}
    for name in PORT_NAMES:
        env[f"AMCTL_PORT_{name.upper()}"] = str(processes.free_port())
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
