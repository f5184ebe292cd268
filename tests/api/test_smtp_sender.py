"""The SMTP sender against a real SMTP server (aiosmtpd) that counts its sessions: connections are kept and
shared by threads, replaced when the server dropped them, RSET after a refusal, and every refusal is sorted
as it always was. The local sink keeps what it received, and `amctl campaign mails` shows it."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from amctl.local import processes
from amctl.local.mail_sink import MailStore, SinkController, read_mails, store_path
from server.domain.email import EmailJob
from server.email_worker.signing import DkimSigner
from server.email_worker.smtp import DeliveryFailed, SmtpSender
from tests.cli import invoke

pytestmark = pytest.mark.api
SENDER = "Audience Manager <campaigns@news.example.com>"


REFUSED_AT_RCPT = {"full@example.com": "452 4.2.2 mailbox full", "gone@example.com": "550 5.1.1 no such user"}
REFUSED_AT_DATA = {"spam@example.com": "554 5.7.1 message refused as spam",
                   "moved@example.com": "550 5.1.6 mailbox moved"}


class RefusingStore(MailStore):
    """Keeps mails like the local sink, and answers some addresses the way real servers refuse them."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.raw: list[bytes] = []
        self.quits = 0
        self.closing_after_first_mail = False  # answer MAIL with 421 on a session that already sent one

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,  # the names aiosmtpd calls
                          options: list[str]) -> str:
        if self.closing_after_first_mail and getattr(session, "mails", 0):
            return "421 4.4.2 idle too long, closing"
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          options: list[str]) -> str:
        if address in REFUSED_AT_RCPT:
            return REFUSED_AT_RCPT[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        session.mails = getattr(session, "mails", 0) + 1
        if envelope.rcpt_tos[0] in REFUSED_AT_DATA:
            return REFUSED_AT_DATA[envelope.rcpt_tos[0]]
        self.raw.append(envelope.content)
        return await super().handle_DATA(server, session, envelope)

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"


@dataclass
class Server:
    store: RefusingStore
    port: int
    controller: SinkController | None = None
    sessions_before: int = 0  # sessions of the controllers stopped by `restart`

    def start(self) -> None:
        self.controller = SinkController(self.store, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.sessions_before += self.controller.sessions
            self.controller.stop()
            self.controller = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def sessions(self) -> int:
        return self.sessions_before + (self.controller.sessions if self.controller else 0)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(RefusingStore(store_path(tmp_path)), processes.free_port())
    server.start()
    yield server
    server.stop()


def job(to: str, user: str = "ann", **extra: str) -> EmailJob:
    return EmailJob(campaign_id="c1", user_id=user, to=to, subject=f"Hello {user}", body=f"Hi {user}.\n",
                    queued_at=datetime.now(UTC), **extra)  # type: ignore[arg-type]


def sender(server: Server, pool_size: int = 8, idle_s: float = 30.0, signer: DkimSigner | None = None) -> SmtpSender:
    return SmtpSender("127.0.0.1", server.port, 5.0, SENDER, pool_size=pool_size, pool_idle_s=idle_s, signer=signer)


def test_fifty_mails_on_eight_threads_share_at_most_eight_connections(server: Server, tmp_path: Path) -> None:
    smtp = sender(server, pool_size=8)
    try:
        with ThreadPoolExecutor(8) as threads:
            list(threads.map(smtp.send, [job(f"user{i}@example.com", f"u{i}") for i in range(50)]))
    finally:
        smtp.close()
    received = read_mails(store_path(tmp_path))
    assert sorted(m.user_id or "" for m in received) == sorted(f"u{i}" for i in range(50))
    assert 1 <= server.sessions <= 8
    assert server.store.quits == server.sessions  # close() said goodbye on every connection it kept


def test_one_connection_carries_mails_one_after_another_and_close_quits_it(server: Server) -> None:
    smtp = sender(server)
    for i in range(5):
        smtp.send(job(f"user{i}@example.com", f"u{i}"))
    assert server.sessions == 1 and server.store.quits == 0
    smtp.close()
    assert server.store.quits == 1


def test_a_server_restart_between_mails_is_survived(server: Server, tmp_path: Path) -> None:
    smtp = sender(server)
    try:
        smtp.send(job("ann@example.com", "ann"))
        server.restart()  # the kept connection is closed by the server going away
        smtp.send(job("bob@example.com", "bob"))  # no DeliveryFailed: a fresh connection took over
    finally:
        smtp.close()
    assert [m.user_id for m in read_mails(store_path(tmp_path))] == ["ann", "bob"]
    assert server.sessions == 2


def test_a_421_on_a_kept_connection_is_a_reconnect_not_a_failure(server: Server, tmp_path: Path) -> None:
    server.store.closing_after_first_mail = True
    smtp = sender(server)
    try:
        smtp.send(job("ann@example.com", "ann"))
        smtp.send(job("bob@example.com", "bob"))
    finally:
        smtp.close()
    assert [m.user_id for m in read_mails(store_path(tmp_path))] == ["ann", "bob"]
    assert server.sessions == 2


def test_refusals_keep_their_classification_and_the_connection_is_reset_for_the_next_mail(
        server: Server, tmp_path: Path) -> None:
    smtp = sender(server)
    outcomes: dict[str, tuple[bool, bool]] = {}
    try:
        for address in ("gone@example.com", "full@example.com", "spam@example.com", "moved@example.com"):
            with pytest.raises(DeliveryFailed) as failed:
                smtp.send(job(address))
            outcomes[address] = (failed.value.permanent, failed.value.hard_bounce)
        smtp.send(job("ann@example.com", "ann"))
    finally:
        smtp.close()
    assert outcomes == {
        "gone@example.com": (True, True),  # 550 at RCPT: the address is refused for good
        "full@example.com": (False, False),  # 452: try again later
        "spam@example.com": (True, False),  # 554 5.7.1 at DATA: this mail, not the address
        "moved@example.com": (True, True),  # 550 5.1.6 at DATA: a bad mailbox, even this late
    }
    assert [m.user_id for m in read_mails(store_path(tmp_path))] == ["ann"]
    assert server.sessions == 1  # every refusal was RSET and the connection used again


def test_an_unreachable_server_is_a_transient_failure() -> None:
    smtp = SmtpSender("127.0.0.1", processes.free_port(), 2.0, SENDER, pool_size=2, pool_idle_s=30.0)
    with pytest.raises(DeliveryFailed, match="unreachable") as failed:
        smtp.send(job("ann@example.com"))
    assert not failed.value.permanent and not failed.value.hard_bounce


def test_connections_idle_too_long_are_not_reused_and_idle_zero_keeps_none(server: Server) -> None:
    expiring = sender(server, idle_s=0.2)
    expiring.send(job("ann@example.com", "ann"))
    time.sleep(0.4)  # past the idle limit
    expiring.send(job("bob@example.com", "bob"))
    expiring.close()
    assert server.sessions == 2
    one_per_mail = sender(server, idle_s=0)
    for i in range(3):
        one_per_mail.send(job(f"user{i}@example.com", f"u{i}"))
    assert server.sessions == 2 + 3
    assert server.store.quits == 1 + 3  # an expired one is just closed; one per mail says QUIT after each


def test_a_signed_mail_arrives_verifiable_and_the_sink_keeps_what_was_sent(server: Server, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    signer = DkimSigner("news.example.com", "s1", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    url = "http://127.0.0.1:30083/unsubscribe/" + "t" * 100
    smtp = sender(server, signer=signer)
    try:
        smtp.send(job("ann@example.com", "ann", body_html="<p>Hi ann</p>", unsubscribe_url=url,
                      unsubscribe_mailto="mailto:unsubscribe@news.example.com?subject=unsubscribe"))
        smtp.send(job("bob@example.com", "bob"))
    finally:
        smtp.close()
    assert dkim.verify(server.store.raw[0], dnsfunc=lambda name, timeout=5: record)
    ann, bob = read_mails(store_path(tmp_path))
    assert ann.headers[0][0] == "DKIM-Signature"  # in the order sent: the signature is prepended
    assert ann.header("list-unsubscribe") == f"<{url}>, <mailto:unsubscribe@news.example.com?subject=unsubscribe>"
    assert ann.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert ann.body == "Hi ann.\n" and ann.body_html is not None and ann.body_html.strip() == "<p>Hi ann</p>"
    assert bob.body_html is None and not bob.has_list_unsubscribe

    listed = invoke("campaign", "mails", "c1", "--json", env={"AMCTL_STATE_DIR": str(tmp_path)})
    assert listed.exit_code == 0, listed.output
    mails = json.loads(listed.stdout)
    assert [m["user_id"] for m in mails] == ["ann", "bob"]
    assert ["List-Unsubscribe-Post", "List-Unsubscribe=One-Click"] in mails[0]["headers"]
    table = invoke("campaign", "mails", "c1", env={"AMCTL_STATE_DIR": str(tmp_path), "COLUMNS": "250"})
    ann_row, bob_row = (line for line in table.stdout.splitlines() if "@example.com" in line)
    assert "List-Unsubscribe, HTML, DKIM" in ann_row and bob_row.rstrip(" │").endswith("DKIM")


def test_mails_kept_before_headers_were_kept_still_read(tmp_path: Path) -> None:
    path = store_path(tmp_path)
    path.parent.mkdir(parents=True)
    old = {"received_at": "2026-01-01T00:00:00Z", "mail_from": "am@example.com", "rcpt_to": ["a@x"],
           "subject": "Hi", "body": "b", "campaign_id": "c1", "user_id": "u", "message_id": "<m>"}
    path.write_text(json.dumps(old) + "\n")
    (mail,) = read_mails(path, "c1")
    assert mail.headers == [] and mail.body_html is None and not mail.has_list_unsubscribe
    table = invoke("campaign", "mails", "c1", env={"AMCTL_STATE_DIR": str(tmp_path), "COLUMNS": "250"})
    assert table.exit_code == 0 and "a@x" in table.stdout
