"""`amctl up --with-monitoring`: a local Prometheus scraping every service with the Kubernetes target's
alert rules, remembered across restarts, switched off again, and stopped by `amctl down`."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml

from amctl.local import processes
from amctl.prometheus import ALERTS_FILE
from tests.e2e.stack import Stack, amctl, stack_environment

pytestmark = pytest.mark.e2e
SCRAPED = {"segment-api", "ingestion-api", "communication-api", "email-worker", "delivery-worker", "rule-engine"}


@dataclass
class Monitored:
    stack: Stack
    prometheus: httpx.Client
    port: int
    up_output: str

    def status(self) -> dict[str, dict[str, Any]]:
        result = amctl(self.stack.env, "status", "--json")
        return {row["name"]: row for row in json.loads(result.stdout)}

    def api(self, path: str, **params: str) -> Any:
        answer = self.prometheus.get(f"/api/v1/{path}", params=params)
        answer.raise_for_status()
        return answer.json()["data"]


def eventually(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"{what} did not hold within {timeout_s} s; last seen: {last!r}")


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory, prometheus_binary: Path) -> Iterator[Monitored]:
    env = {**stack_environment(tmp_path_factory.mktemp("monitored-stack")),
           "AMCTL_PROMETHEUS_BINARY": str(prometheus_binary)}
    up = amctl(env, "up", "--with-monitoring")
    if up.returncode != 0:
        amctl(env, "down", "--purge")
        pytest.fail(f"amctl up --with-monitoring failed:\n{up.stdout}\n{up.stderr}")
    port = int(env["AMCTL_PORT_PROMETHEUS"])
    stack = Stack(env)
    prometheus = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        yield Monitored(stack, prometheus, port, up.stdout + up.stderr)
    finally:
        prometheus.close()
        stack.close()
        amctl(env, "down", "--purge")  # the data may live outside tmp (/var/lib/amctl when root)


def targets_up(monitored: Monitored) -> list[dict[str, Any]]:
    """Every active target, once all of them are up (empty until then)."""
    targets: list[dict[str, Any]] = monitored.api("targets", state="active")["activeTargets"]
    return targets if targets and all(t["health"] == "up" for t in targets) else []


def test_up_starts_prometheus_and_every_scrape_target_comes_up(monitored: Monitored) -> None:
    assert "prometheus         healthy" in monitored.up_output
    assert f"Prometheus         http://127.0.0.1:{monitored.port}/targets" in monitored.up_output
    targets = eventually(lambda: targets_up(monitored), 45, "every scrape target up")
    env = monitored.stack.env
    scraped = {t["labels"].get("component", t["labels"]["job"]): t["scrapeUrl"] for t in targets}
    assert scraped == {
        "prometheus": f"http://127.0.0.1:{monitored.port}/metrics",
        **{name: f"http://127.0.0.1:{env['AMCTL_PORT_' + name.upper().replace('-', '_')]}/metrics"
           for name in SCRAPED},
    }
    assert {t["labels"]["job"] for t in targets if "component" in t["labels"]} == {"pods"}


def test_the_alert_rules_of_the_kubernetes_target_are_loaded(monitored: Monitored) -> None:
    expected = {g["name"]: [r["alert"] for r in g["rules"]] for g in yaml.safe_load(ALERTS_FILE.read_text())["groups"]}
    groups = monitored.api("rules")["groups"]
    assert {g["name"]: [r["name"] for r in g["rules"]] for g in groups} == expected
    assert all(r["health"] == "ok" and r["type"] == "alerting" for g in groups for r in g["rules"])
    assert {g["file"] for g in groups} == {str(ALERTS_FILE)}


def test_a_counter_of_the_ingestion_api_can_be_queried(monitored: Monitored) -> None:
    event = {"userId": f"metrics-{uuid.uuid4().hex[:8]}", "eventType": "purchase", "properties": {"amount": 5}}
    assert monitored.stack.events.post("/api/events", json=event).status_code == 202
    query = 'am_http_requests_total{job="pods",component="ingestion-api",route="/api/events",status="202"}'

    def counted() -> float:
        result = monitored.api("query", query=query)["result"]
        return sum(float(series["value"][1]) for series in result)

    assert eventually(counted, 45, f"{query} >= 1") >= 1


def test_status_shows_prometheus_its_targets_and_rules(monitored: Monitored) -> None:
    eventually(lambda: targets_up(monitored), 45, "every scrape target up")
    row = monitored.status()["prometheus"]
    assert row["state"] == "running" and row["port"] == monitored.port and row["rss_bytes"] > 0
    assert row["detail"] == f"{len(SCRAPED) + 1}/{len(SCRAPED) + 1} targets up, 6 rules"
    # run directly from the package's binary: config and data under the state dir, nothing of Debian's
    state_dir = monitored.stack.env["AMCTL_STATE_DIR"]
    command = psutil.Process(row["pid"]).cmdline()
    assert f"--config.file={state_dir}/prometheus/prometheus.yml" in command
    assert f"--storage.tsdb.path={state_dir}/prometheus/data" in command
    assert not [arg for arg in command if "/etc/prometheus" in arg or "/var/lib/prometheus" in arg]


def test_a_plain_up_after_a_crash_starts_prometheus_again(monitored: Monitored) -> None:
    crashed = monitored.status()["prometheus"]["pid"]
    os.kill(crashed, signal.SIGKILL)
    eventually(lambda: not processes.process_alive(crashed), 10, "the killed Prometheus gone")
    up = amctl(monitored.stack.env, "up")
    assert up.returncode == 0, up.stderr
    assert "prometheus         healthy" in up.stderr and "rule-engine        already running" in up.stderr
    row = monitored.status()["prometheus"]
    assert row["state"] == "running" and row["pid"] != crashed


def test_without_monitoring_stops_it_and_with_monitoring_brings_it_back_with_its_data(monitored: Monitored) -> None:
    env = monitored.stack.env
    off = amctl(env, "up", "--without-monitoring")
    assert off.returncode == 0, off.stderr
    assert "prometheus         stopped (no longer chosen)" in off.stderr
    assert not processes.port_accepts("127.0.0.1", monitored.port)
    assert "prometheus" not in monitored.status()
    assert "prometheus" not in amctl(env, "up").stderr  # the choice is remembered

    on = amctl(env, "up", "--with-monitoring")
    assert on.returncode == 0, on.stderr
    assert monitored.status()["prometheus"]["state"] == "running"
    # the samples scraped before are still there: the data directory outlives the process
    earlier = monitored.api("query", query='am_http_requests_total{component="ingestion-api",status="202"}')
    assert earlier["result"]


def test_down_stops_prometheus_and_closes_its_port(monitored: Monitored) -> None:
    pid = monitored.status()["prometheus"]["pid"]
    down = amctl(monitored.stack.env, "down")
    assert down.returncode == 0, down.stderr
    assert "prometheus         stopped" in down.stderr
    assert not processes.port_accepts("127.0.0.1", monitored.port)
    assert not processes.process_alive(pid)
    assert monitored.status()["prometheus"]["state"] == "stopped"
