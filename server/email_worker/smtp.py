"""One email over SMTP, with failures sorted into "try again later" and "never going to work".

The mail is text, or text and HTML as multipart/alternative; a mail with an unsubscribe link carries
List-Unsubscribe and List-Unsubscribe-Post (RFC 2369, RFC 8058), which mailbox providers require of bulk
senders before they show their own "Unsubscribe" button. It is DKIM-signed when a signer is given, and
sent over a connection kept open between mails (`server.email_worker.connections`).
"""

from __future__ import annotations

import re
import smtplib
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import formatdate, make_msgid, parseaddr
from typing import Any

from server.domain.email import EmailJob
from server.email_worker.connections import ConnectionsBusy, Lease, SmtpConnections, answers_ok
from server.email_worker.signing import DkimSigner

ONE_CLICK = "List-Unsubscribe=One-Click"
# Headers whose value a receiver reads raw: written as they are, folded only between list items
_VERBATIM = frozenset({"list-unsubscribe", "list-unsubscribe-post", "x-campaign-id", "x-user-id"})
MAX_LINE = 998  # RFC 5322's limit on a line, folding included
_BAD_MAILBOX = re.compile(r"5\.1\.\d{1,3}\b")  # enhanced status codes (RFC 3463) for a bad destination address


class MailPolicy(EmailPolicy):
    """The standard library's SMTP policy, except for the headers in `_VERBATIM`: its folding turns a value
    with a token longer than a line into RFC 2047 encoded-words, which a mail client decodes but a mailbox
    provider reading List-Unsubscribe does not (the link is then broken). Those headers keep their ASCII
    value as it is, folded only after the commas between `<...>` items."""

    def fold(self, name: str, value: Any) -> str:
        verbatim = _verbatim(name, value, self.linesep)
        return verbatim if verbatim is not None else super().fold(name, value)

    def fold_binary(self, name: str, value: Any) -> bytes:
        verbatim = _verbatim(name, value, self.linesep)
        return verbatim.encode("ascii") if verbatim is not None else super().fold_binary(name, value)


def _verbatim(name: str, value: Any, linesep: str) -> str | None:
    text = str(value)
    if name.lower() not in _VERBATIM or not text.isascii() or "\r" in text or "\n" in text:
        return None
    line = f"{name}: {text}"
    if len(line) > 78 and ", <" in text:  # one item a line; folding inside a URL would break it
        line = f",{linesep} <".join(line.split(", <"))
    if any(len(part) > MAX_LINE for part in line.split(linesep)):
        return None
    return line + linesep


MAIL_POLICY = MailPolicy(linesep="\r\n")  # as email.policy.SMTP, plus the verbatim headers


class DeliveryFailed(Exception):
    """The mail was not delivered; `permanent` says whether retrying could help, `hard_bounce` whether the
    address itself was refused for good (it is then suppressed)."""

    def __init__(self, message: str, permanent: bool, hard_bounce: bool = False) -> None:
        super().__init__(message)
        self.permanent, self.hard_bounce = permanent, hard_bounce


def list_unsubscribe(job: EmailJob) -> str | None:
    """The List-Unsubscribe value: the one-click URL first (what RFC 8058 uses), then the mailto."""
    targets = [job.unsubscribe_url] if job.unsubscribe_url else []
    if job.unsubscribe_mailto:
        mailto = job.unsubscribe_mailto
        targets.append(mailto if mailto.lower().startswith("mailto:") else f"mailto:{mailto}")
    return ", ".join(f"<{t}>" for t in targets) or None


def build_message(job: EmailJob, sender: str) -> EmailMessage:
    """The mail for one job: text only, or text then HTML as multipart/alternative (clients show the last part
    they can render, so HTML where it can be shown and the text elsewhere)."""
    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = sender
    message["To"] = job.to
    message["Subject"] = job.subject
    message["Date"] = formatdate(localtime=False)
    # deterministic per (campaign, user), so a downstream system can also spot a duplicate
    message["Message-ID"] = make_msgid(idstring=job.idempotency_key.replace(":", "."), domain="audience-manager")
    message["X-Campaign-Id"] = job.campaign_id
    message["X-User-Id"] = job.user_id
    unsubscribe = list_unsubscribe(job)
    if unsubscribe is not None:
        message["List-Unsubscribe"] = unsubscribe
        if job.unsubscribe_url:  # one-click means a POST to the URL; a mailto alone offers none
            message["List-Unsubscribe-Post"] = ONE_CLICK
    message.set_content(job.body)
    if job.body_html is not None:
        message.add_alternative(job.body_html, subtype="html")
    return message


def _reply_text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)


class SmtpSender:
    """Sends with the standard library's client (blocking: call it from worker threads, several at once);
    keeps up to `pool_size` connections open between mails for `pool_idle_s` seconds."""

    def __init__(self, host: str, port: int, timeout_s: float, sender: str, pool_size: int = 1,
                 pool_idle_s: float = 0.0, signer: DkimSigner | None = None) -> None:
        self.host, self.port, self.timeout_s, self.sender, self.signer = host, port, timeout_s, sender, signer
        self.envelope_from = parseaddr(sender)[1] or sender
        self.connections = SmtpConnections(self._open, pool_size, pool_idle_s, wait_s=timeout_s)

    def _open(self) -> smtplib.SMTP:
        return smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)

    def close(self) -> None:
        """Close the connections kept open (called on shutdown)."""
        self.connections.close()

    def serialize(self, job: EmailJob) -> bytes:
        """The bytes sent as DATA: the message with CRLF line endings, signed when a signer is set."""
        data = build_message(job, self.sender).as_bytes()
        return self.signer.sign(data) if self.signer is not None else data

    def send(self, job: EmailJob) -> None:
        """Deliver one job's mail; DeliveryFailed says whether a retry could help."""
        data = self.serialize(job)
        recipient = parseaddr(job.to)[1] or job.to
        try:
            with self.connections.lease() as lease:
                self._transfer(lease, recipient, data)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            permanent = all(c >= 500 for c in codes)
            raise DeliveryFailed(f"recipient refused: {exc.recipients}", permanent, hard_bounce=permanent) from None
        except smtplib.SMTPResponseException as exc:
            text = _reply_text(exc.smtp_error)
            bad_mailbox = isinstance(exc, smtplib.SMTPDataError) and exc.smtp_code >= 500 and bool(
                _BAD_MAILBOX.match(text))  # refused after DATA, but for the address (e.g. 550 5.1.1)
            raise DeliveryFailed(f"SMTP {exc.smtp_code}: {text}", exc.smtp_code >= 500, hard_bounce=bad_mailbox
                                 ) from None
        except ConnectionsBusy as exc:
            raise DeliveryFailed(str(exc), False) from None
        except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timed out: the server may come back
            raise DeliveryFailed(f"SMTP server {self.host}:{self.port} unreachable: {exc}", False) from None

    def _transfer(self, lease: Lease, recipient: str, data: bytes) -> None:
        """MAIL, RCPT, DATA, raising what `smtplib.SMTP.sendmail` raises. MAIL comes first on its own: on a
        kept connection the server closed meanwhile it fails before anything of the mail was sent, so a fresh
        connection takes over and the mail has not failed. After a refusal the connection is RSET, or dropped."""
        options = ["SMTPUTF8", "BODY=8BITMIME"] if not (self.envelope_from + recipient).isascii() else []
        try:
            code, reply = self._mail(lease.client, options, len(data))
        except (smtplib.SMTPServerDisconnected, OSError):
            if not lease.reused:
                raise
            code, reply = self._mail(lease.replace(), options, len(data))
        if code == 421 and lease.reused:  # "closing the channel": the kept connection outlived the server's wish
            code, reply = self._mail(lease.replace(), options, len(data))
        client = lease.client
        try:
            if code != 250:
                raise smtplib.SMTPSenderRefused(code, reply, self.envelope_from)
            code, reply = client.rcpt(recipient)
            if code not in (250, 251):
                raise smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
            code, reply = client.data(data)
            if code != 250:
                raise smtplib.SMTPDataError(code, reply)
        except smtplib.SMTPResponseException as exc:
            lease.keep = exc.smtp_code != 421 and answers_ok(client.rset)  # RSET: the next mail starts clean
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            lease.keep = all(c != 421 for c, _ in exc.recipients.values()) and answers_ok(client.rset)
            raise

    def _mail(self, client: smtplib.SMTP, options: list[str], size: int) -> tuple[int, bytes]:
        if client.has_extn("size"):  # lets the server refuse an oversized mail before it is sent
            options = [*options, f"SIZE={size}"]
        if options and "SMTPUTF8" in options and not client.has_extn("smtputf8"):
            raise smtplib.SMTPNotSupportedError("the server does not accept non-ASCII addresses (SMTPUTF8)")
        return client.mail(self.envelope_from, options)
