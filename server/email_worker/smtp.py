"""One email over SMTP, with failures sorted into "try again later" and "never going to work"."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from server.domain.email import EmailJob


class DeliveryFailed(Exception):
    """The mail was not delivered; `permanent` says whether retrying could help, `hard_bounce` whether the
    address itself was refused for good (it is then suppressed)."""

    def __init__(self, message: str, permanent: bool, hard_bounce: bool = False) -> None:
        super().__init__(message)
        self.permanent, self.hard_bounce = permanent, hard_bounce


def build_message(job: EmailJob, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = job.to
    message["Subject"] = job.subject
    message["Date"] = formatdate(localtime=False)
    # deterministic per (campaign, user), so a downstream system can also spot a duplicate
    message["Message-ID"] = make_msgid(idstring=job.idempotency_key.replace(":", "."), domain="audience-manager")
    message["X-Campaign-Id"] = job.campaign_id
    message["X-User-Id"] = job.user_id
    message.set_content(job.body)
    return message


class SmtpSender:
    """Sends with the standard library's client (blocking: call it from a worker thread)."""

    def __init__(self, host: str, port: int, timeout_s: float, sender: str) -> None:
        self.host, self.port, self.timeout_s, self.sender = host, port, timeout_s, sender

    def close(self) -> None:
        """Close the connections kept open (none yet: one connection per mail)."""

    def send(self, job: EmailJob) -> None:
        message = build_message(job, self.sender)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as client:
                client.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            permanent = all(c >= 500 for c in codes)
            raise DeliveryFailed(f"recipient refused: {exc.recipients}", permanent, hard_bounce=permanent) from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            raise DeliveryFailed(f"SMTP {exc.smtp_code}: {text}", exc.smtp_code >= 500) from None
        except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timed out: the server may come back
            raise DeliveryFailed(f"SMTP server {self.host}:{self.port} unreachable: {exc}", False) from None
