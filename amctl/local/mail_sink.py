"""The local target's SMTP server: accepts every mail and keeps it, so the demo can show what was sent.

Run as `python -m amctl.local.mail_sink --port 30025 --store mails.jsonl`; each received message
is one JSON line (time, envelope, subject, body, campaign and user headers). `read_mails` reads
them back for `amctl campaign mails`.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class ReceivedMail:
    received_at: str
    mail_from: str
    rcpt_to: list[str]
    subject: str
    body: str
    campaign_id: str | None
    user_id: str | None
    message_id: str | None


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
        mail = ReceivedMail(
            received_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            mail_from=envelope.mail_from, rcpt_to=list(envelope.rcpt_tos), subject=str(parsed["Subject"] or ""),
            body=body.get_content() if body is not None else "", campaign_id=parsed["X-Campaign-Id"],
            user_id=parsed["X-User-Id"], message_id=parsed["Message-ID"],
        )
        line = json.dumps(asdict(mail)) + "\n"
        with self._lock, self.path.open("a") as out:
            out.write(line)
        return "250 Message accepted for delivery"


def store_path(state_dir: Path) -> Path:
    """Where the local stack's sink keeps its mails."""
    return state_dir / "mail" / "mails.jsonl"


def read_mails(path: Path, campaign_id: str | None = None) -> list[ReceivedMail]:
    """The mails the sink kept, oldest first; only one campaign's when `campaign_id` is given."""
    if not path.exists():
        return []
    mails = [ReceivedMail(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    return [m for m in mails if campaign_id is None or m.campaign_id == campaign_id]


def start(host: str, port: int, store: Path) -> Controller:
    controller = Controller(MailStore(store), hostname=host, port=port, ready_timeout=10)
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
