"""Fixtures the API tests share: for the campaign tests an SMTP server that keeps what it receives and a Segment
API, and for amctl the three APIs as processes."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from psycopg import sql

from amctl.local import processes
from amctl.local.broker import EmbeddedBroker
from amctl.local.mail_sink import MailStore, ReceivedMail, read_mails
from amctl.local.postgres import EmbeddedPostgres
from server.communication_api.app import create_app as communication_app
from server.email_worker.app import create_app as worker_app
from server.runtime.secrets import new_key
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app as segment_app
from server.stores.kafka import create_topics
from tests.conftest import unique_name


class BouncingStore(MailStore):
    """Refuses recipients at bounce.example permanently, like a real server's 550."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # the name aiosmtpd calls
                          options: list[str]) -> str:
        if address.endswith("@bounce.example"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"


class Sink:
    def __init__(self, path: Path, port: int) -> None:
        self.path, self.port = path, port
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(BouncingStore(self.path), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    def mails(self, campaign_id: str) -> list[ReceivedMail]:
        return read_mails(self.path, campaign_id)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    sink = Sink(tmp_path / "mails.jsonl", processes.free_port())
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def campaign_settings(service_settings: ServiceSettings, sink: Sink) -> ServiceSettings:
    """The services' settings with the SMTP server above and quick retries."""
    return service_settings.model_copy(update={"smtp_port": sink.port, "email_retry_base_s": 0.2})


@pytest.fixture
def settings(campaign_settings: ServiceSettings) -> ServiceSettings:
    return campaign_settings


@pytest.fixture
def api(settings: ServiceSettings) -> Iterator[TestClient]:
    """The Communication API on `settings`."""
    with TestClient(communication_app(settings)) as client:
        yield client


@pytest.fixture
def worker(settings: ServiceSettings) -> Iterator[TestClient]:
    """The email worker on `settings`."""
    with TestClient(worker_app(settings)) as client:
        yield client


@pytest.fixture
def segments(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(segment_app(settings)) as client:
        yield client


SERVICES = {"segment_api": "server.segment_api", "communication_api": "server.communication_api",
            "ingestion_api": "server.ingestion_api"}


@pytest.fixture(scope="module")
def services(postgres_server: EmbeddedPostgres, template_database: str, kafka_broker: EmbeddedBroker,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The three APIs as `amctl up` runs them, on a database and topics of this module's own, and the
    environment that points amctl at them (the tests use names of their own)."""
    database, prefix, logs = unique_name("db_cli_"), unique_name("cli") + ".", tmp_path_factory.mktemp("cli")
    with psycopg.connect(postgres_server.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(database),
                                                                      sql.Identifier(template_database)))
    create_topics(kafka_broker.bootstrap, prefix)
    database_url = f"postgresql://postgres@{postgres_server.host}:{postgres_server.port}/{database}"
    env = {**os.environ, "AMCTL_STATE_DIR": str(logs / "state"), "COLUMNS": "200", "NO_COLOR": "1",
           "AM_DATABASE_URL": database_url}  # the services' setting; amctl ignores it, tests may seed the store
    env.pop("AMCTL_API_KEY", None)
    started: list[int] = []
    try:
        for setting, module in SERVICES.items():
            port, log = processes.free_port(), logs / f"{module}.log"
            service_env = {**os.environ, "AM_PORT": str(port), "AM_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
                           "AM_DATABASE_URL": database_url, "AM_TOPIC_PREFIX": prefix,
                           "AM_SECRETS_KEY": new_key()}
            started.append(processes.spawn([sys.executable, "-m", module], service_env, log))
            env[f"AMCTL_PORT_{setting.upper()}"] = str(port)
            deadline = time.monotonic() + 30
            while not healthy(port):
                assert time.monotonic() < deadline and processes.process_alive(started[-1]), log.read_text()
                time.sleep(0.1)
        yield env
    finally:
        for pid in started:
            processes.stop(pid)


def healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/actuator/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
