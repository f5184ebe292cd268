"""`amctl up`, `status`, `down` and `logs` on the local target, as a user runs them."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from amctl.local import processes
from tests.e2e.stack import amctl, stack_environment

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    env = stack_environment(Path(tmp_path_factory.mktemp("stack")))
    yield env
    amctl(env, "down", "--purge")  # the data may live outside tmp (/var/lib/amctl when root)


def ports(env: dict[str, str], name: str) -> int:
    return int(env[f"AMCTL_PORT_{name.upper()}"])


def test_up_status_down_leaves_nothing_behind(stack_env: dict[str, str]) -> None:
    up = amctl(stack_env, "up")
    assert up.returncode == 0, up.stderr
    assert "ready in" in up.stdout

    for service in ("segment_api", "ingestion_api", "communication_api"):
        health = httpx.get(f"http://127.0.0.1:{ports(stack_env, service)}/actuator/health", timeout=5)
        assert health.status_code == 200
        assert health.json()["status"] == "UP"

    status = amctl(stack_env, "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {row["name"]: row for row in json.loads(status.stdout)}
    assert set(rows) == {"postgres", "s3", "kafka", "segment-api", "ingestion-api", "communication-api", "mail-sink",
                         "email-worker", "webhook-sink", "delivery-worker", "rule-engine"}
    assert all(row["state"] == "running" and row["pid"] and row["rss_bytes"] > 0 for row in rows.values())

    again = amctl(stack_env, "up")
    assert again.returncode == 0
    assert "already running" in again.stdout + again.stderr

    down = amctl(stack_env, "down")
    assert down.returncode == 0, down.stderr
    for name in ("segment_api", "ingestion_api", "communication_api", "postgres", "s3", "kafka", "smtp", "email_worker",
                 "webhook_sink", "delivery_worker", "rule_engine", "flink_ui"):
        assert not processes.port_accepts("127.0.0.1", ports(stack_env, name)), f"{name} still listening"
    for row in rows.values():
        assert not processes.process_alive(row["pid"]), f"{row['name']} still running"
    after = json.loads(amctl(stack_env, "status", "--json").stdout)
    assert {row["state"] for row in after} == {"stopped"}


def test_data_survives_down_and_up_but_not_purge(stack_env: dict[str, str]) -> None:
    assert amctl(stack_env, "up").returncode == 0
    url = f"postgresql://postgres@127.0.0.1:{ports(stack_env, 'postgres')}/audience"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO user_profiles (user_id, profile) VALUES ('kept', '{}')")
    assert amctl(stack_env, "down").returncode == 0
    assert amctl(stack_env, "up").returncode == 0
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM user_profiles WHERE user_id = 'kept'").fetchone() == (1,)
    assert amctl(stack_env, "down", "--purge").returncode == 0
    assert not Path(stack_env["AMCTL_STATE_DIR"]).exists()


def test_port_in_use_fails_cleanly_and_stops_what_it_started(stack_env: dict[str, str]) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports(stack_env, "ingestion_api")))
        blocker.listen()
        up = amctl(stack_env, "up")
    assert up.returncode == 1
    port = ports(stack_env, "ingestion_api")
    assert f"port {port} for ingestion-api is already in use" in up.stderr
    assert "AMCTL_PORT_INGESTION_API" in up.stderr
    assert "Traceback" not in up.stderr
    status = json.loads(amctl(stack_env, "status", "--json").stdout)
    assert {row["state"] for row in status} == {"stopped"}
    for name in ("postgres", "kafka", "segment_api"):
        assert not processes.port_accepts("127.0.0.1", ports(stack_env, name))


def test_up_recovers_from_a_crashed_component_and_stale_records(stack_env: dict[str, str]) -> None:
    assert amctl(stack_env, "up").returncode == 0
    rows = {row["name"]: row for row in json.loads(amctl(stack_env, "status", "--json").stdout)}
    os.kill(rows["segment-api"]["pid"], 9)
    processes.reap(rows["segment-api"]["pid"])
    status = {row["name"]: row for row in json.loads(amctl(stack_env, "status", "--json").stdout)}
    assert status["segment-api"]["state"] == "stopped"
    up = amctl(stack_env, "up")
    assert up.returncode == 0, up.stderr
    health = httpx.get(f"http://127.0.0.1:{ports(stack_env, 'segment_api')}/actuator/health", timeout=5)
    assert health.status_code == 200


def test_logs_and_unknown_component(stack_env: dict[str, str]) -> None:
    assert amctl(stack_env, "up").returncode == 0
    logs = amctl(stack_env, "logs", "migrations")
    assert logs.returncode == 0
    assert "applied migrations" in logs.stdout
    unknown = amctl(stack_env, "logs", "nope")
    assert unknown.returncode == 1
    assert "unknown component 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_component_that_crashes_is_reported_with_its_log(stack_env: dict[str, str]) -> None:
    broken = {**stack_env, "AM_DATABASE_POOL_MAX": "not-a-number"}  # every server process refuses it
    up = amctl(broken, "up")
    assert up.returncode == 1
    assert "migrations failed (exit 1)" in up.stderr
    assert "last log lines" in up.stderr
    assert "database_pool_max" in up.stderr  # the service's own error, from its log
    status = json.loads(amctl(stack_env, "status", "--json").stdout)
    assert {row["state"] for row in status} == {"stopped"}
