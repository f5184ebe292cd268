"""The local target's SMTP server: accepts every mail and keeps it, so the demo can show what was sent.

Run as `python -m amctl.local.mail_sink --port 30025 --store mails.jsonl`; each received message
is one JSON line (time, envelope, subject, the text and HTML bodies, campaign and user, and every header
as sent). `read_mails` reads them back for `amctl campaign mails`.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage, MIMEPart
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

_FOLD = re.compile(r"\r?\n(?=[ \t])")


@dataclass(frozen=True)
class ReceivedMail:
    """One mail as the sink received it. `headers` are [name, value] pairs in the order they came, values as
    sent (unfolded, not decoded): a list and not a dict, because order and repeats are part of what was sent
    (DKIM-Signature and Received come first and may repeat). Lines kept before `headers` and `body_html`
    existed read with none."""

    received_at: str
    mail_from: str
    rcpt_to: list[str]
    subject: str
    body: str  # the text part (the HTML one when the mail has no text)
    campaign_id: str | None
    user_id: str | None
    message_id: str | None
    body_html: str | None = None
    headers: list[list[str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The first value of header `name` (any case), or None."""
        return next((value for key, value in self.headers if key.lower() == name.lower()), None)

    @property
    def has_list_unsubscribe(self) -> bool:
        return self.header("List-Unsubscribe") is not None


class MailStore:
    """An aiosmtpd handler that appends every accepted message to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # the name aiosmtpd calls
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        body = parsed.get_body(preferencelist=("plain", "html"))
        html = parsed.get_body(preferencelist=("html",))
        mail = ReceivedMail(
            received_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            mail_from=envelope.mail_from, rcpt_to=list(envelope.rcpt_tos), subject=str(parsed["Subject"] or ""),
            body=_text(body), campaign_id=parsed["X-Campaign-Id"],
            user_id=parsed["X-User-Id"], message_id=parsed["Message-ID"],
            body_html=_text(html) if html is not None else None,
            headers=[[name, _FOLD.sub("", str(value))] for name, value in parsed.raw_items()],
        )
        line = json.dumps(asdict(mail)) + "\n"
        with self._lock, self.path.open("a") as out:
            out.write(line)
        return "250 Message accepted for delivery"


def _text(part: MIMEPart | None) -> str:
    return str(part.get_content()).replace("\r\n", "\n") if part is not None else ""


class SinkController(Controller):
    """aiosmtpd's controller, counting the SMTP sessions (connections) clients opened: what a sender that
    keeps connections open saves shows here."""

    def __init__(self, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sessions = 0

    def factory(self) -> SMTP:
        self.sessions += 1  # one protocol object per accepted connection (the event loop's thread only)
        return super().factory()  # type: ignore[no-untyped-call,no-any-return]

    def start(self) -> None:
        super().start()
        self.sessions = 0  # start() connects once itself to see the server answer: not a client's session


def store_path(state_dir: Path) -> Path:
    """Where the local stack's sink keeps its mails."""
    return state_dir / "mail" / "mails.jsonl"


def read_mails(path: Path, campaign_id: str | None = None) -> list[ReceivedMail]:
    """The mails the sink kept, oldest first; only one campaign's when `campaign_id` is given."""
    if not path.exists():
        return []
    mails = [ReceivedMail(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return [m for m in mails if campaign_id is None or m.campaign_id == campaign_id]


def start(host: str, port: int, store: Path) -> SinkController:
    controller = SinkController(MailStore(store), hostname=host, port=port, ready_timeout=10)
    controller.start()
    return controller


def main() -> None:
    parser = argparse.ArgumentParser(description="Local SMTP sink that keeps every mail it receives")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", type=Path, required=True, help="JSON-lines file to append mails to")
    args = parser.parse_args()
    controller = start(args.host, args.port, args.store)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"mail sink listening on {args.host}:{args.port}, keeping mails in {args.store}", flush=True)
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
