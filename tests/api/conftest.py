"""Fixtures the campaign tests share: an SMTP server that keeps what it receives, and a Segment API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient

from amctl.local import processes
from amctl.local.mail_sink import MailStore, ReceivedMail, read_mails
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app as segment_app


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
def segments(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(segment_app(settings)) as client:
        yield client


