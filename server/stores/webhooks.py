"""Calling a destination: one signed POST, the answer judged once (delivered, retry, or fail).

Signed the Standard Webhooks way: `webhook-id` (the message id, the same on every attempt),
`webhook-timestamp` (seconds, this attempt's) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`, one per secret while a rotated-out secret is still honoured).

Which answers are retried: 408, 429 and 5xx (honouring Retry-After), timeouts and connection errors.
Any other 4xx, a redirect (never followed), or a target the guard refuses fails at once, with the answer kept.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

ANSWER_KEPT_CHARS = 2000
USER_AGENT = "audience-manager-webhooks/1"
RETRIED_STATUSES = frozenset({408, 429})
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Answer:
    """What one call came to."""

    outcome: Outcome
    status_code: int | None = None
    body: str = ""  # the start of the answer's body
    error: str | None = None  # why it was not delivered, in one line
    retry_after_s: float | None = None  # what the destination asked for (429/503 Retry-After)
    duration_s: float = 0.0


class TargetRefused(Exception):
    """The URL may not be called: not http(s), or on a private address that is not allow-listed."""


def signature_headers(secrets: Sequence[str], message_id: str, body: str, at: datetime) -> dict[str, str]:
    """The three Standard Webhooks headers for `body`, signed with every secret in `secrets`."""
    at = at.astimezone(UTC)
    signatures = " ".join(Webhook(secret).sign(message_id, at, body) for secret in secrets)
    return {"webhook-id": message_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signatures}


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def judge(status_code: int) -> Outcome:
    if 200 <= status_code < 300:
        return Outcome.DELIVERED
    if status_code in RETRIED_STATUSES or status_code >= 500:
        return Outcome.RETRY
    return Outcome.FAIL


class DestinationGuard:
    """Which URLs may be called. With `block_private` (the default on Kubernetes) a host that resolves to a
    private, loopback, link-local or otherwise non-public address is refused, unless it (or the address)
    is in `allow` ("host, IP or CIDR,…", AM_DESTINATION_ALLOW)."""

    def __init__(self, block_private: bool, allow: str = "") -> None:
        self.block_private = block_private
        entries = [entry.strip().lower() for entry in allow.split(",") if entry.strip()]
        self.allowed_hosts = frozenset(e for e in entries if not _is_network(e))
        self.allowed_networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(e, strict=False) for e in entries if _is_network(e))

    async def check(self, url: str) -> None:
        """Raise TargetRefused if `url` may not be called (resolving its host when private ones are blocked)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TargetRefused("the URL must be http:// or https:// with a host")
        host = parts.hostname.lower()
        if not self.block_private or host in self.allowed_hosts:
            return
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise TargetRefused("the URL's port is not a number from 0 to 65535") from None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise TargetRefused(f"host {host!r} does not resolve: {exc.strerror or exc}") from None
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
            if not self._allowed(address):
                raise TargetRefused(f"host {host!r} resolves to {address}, a private, loopback or link-local "
                                    "address; allow it with AM_DESTINATION_ALLOW if it is meant")

    def _allowed(self, address: Address) -> bool:
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        address = mapped or address
        if any(address in network for network in self.allowed_networks):
            return True
        return address.is_global and not address.is_multicast


def _is_network(entry: str) -> bool:
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
    return True


class WebhookClient:
    """Signed calls to destinations over one pooled HTTP client; redirects are not followed."""

    def __init__(self, guard: DestinationGuard, timeout_s: float, max_connections: int = 100) -> None:
        self.guard = guard
        self.http = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False,
                                      limits=httpx.Limits(max_connections=max_connections),
                                      headers={"user-agent": USER_AGENT})

    async def call(self, url: str, secrets: Sequence[str], message_id: str, body: str,
                   headers: Mapping[str, str] | None = None) -> Answer:
        """POST `body` to `url`, signed now with `secrets`; never raises for what the destination does."""
        started = time.perf_counter()
        try:
            await self.guard.check(url)
        except TargetRefused as exc:
            return Answer(Outcome.FAIL, error=f"refused: {exc}")
        sent = {**(headers or {}), "content-type": "application/json",
                **signature_headers(secrets, message_id, body, datetime.now(UTC))}
        try:
            response = await self.http.post(url, content=body.encode(), headers=sent)
        except httpx.TimeoutException:
            return Answer(Outcome.RETRY, error=f"timed out after {self.http.timeout.read:g} s",
                          duration_s=time.perf_counter() - started)
        except httpx.HTTPError as exc:
            return Answer(Outcome.RETRY, error=f"{type(exc).__name__}: {exc}"[:ANSWER_KEPT_CHARS],
                          duration_s=time.perf_counter() - started)
        outcome = judge(response.status_code)
        error = None
        if outcome is not Outcome.DELIVERED:
            error = f"HTTP {response.status_code}" + (" (redirects are not followed)"
                                                      if 300 <= response.status_code < 400 else "")
        return Answer(outcome, response.status_code, response.text[:ANSWER_KEPT_CHARS], error,
                      retry_after(response.headers.get("retry-after")), time.perf_counter() - started)

    async def aclose(self) -> None:
        await self.http.aclose()
