"""Open SMTP connections kept for the next mail, shared by the worker's sending threads.

A new connection costs a TCP handshake, the server's greeting and EHLO (and, on a real relay, TLS) before
the first mail: reusing it leaves MAIL, RCPT and DATA per mail. At most `size` connections are open at
once; a thread that finds none free waits for one. A kept connection is not reused when it was idle
longer than `idle_s` (the server's own idle timeout would close it under us) or when the server has
already closed it; `idle_s` <= 0 keeps none: one connection per mail.
"""

from __future__ import annotations

import contextlib
import select
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

NOOP_AFTER_IDLE_S = 5.0  # a connection idle this long is asked NOOP first: a middlebox may have dropped it


class ConnectionsBusy(TimeoutError):
    """Every connection stayed in use for the whole wait."""


@dataclass
class _Kept:
    client: smtplib.SMTP
    idle_since: float  # time.monotonic()


def _closed_by_server(client: smtplib.SMTP) -> bool:
    """Whether the server has hung up (or said something unasked, such as 421) while the connection was idle:
    an idle SMTP connection has nothing to read, so a readable socket is one to replace."""
    sock = client.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):  # closed under us
        return True
    return bool(readable)


def answers_ok(command: Callable[[], tuple[int, bytes]]) -> bool:
    """Whether an SMTP command such as `client.noop` or `client.rset` is answered 250; False when the
    connection is no good."""
    try:
        return command()[0] == 250
    except (smtplib.SMTPException, OSError):
        return False


def discard(client: smtplib.SMTP, polite: bool = True) -> None:
    """Close a connection, with QUIT when `polite` (never raises: the server may already be gone)."""
    if polite:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.quit()
    client.close()


class Lease:
    """One connection lent to one mail. `reused` says whether it carried mail before (so a server that closed
    it meanwhile is no failure of this mail); `keep` whether it goes back to the pool after: None leaves it
    to the outcome (kept after a mail, dropped after an exception)."""

    def __init__(self, pool: SmtpConnections, client: smtplib.SMTP, reused: bool) -> None:
        self.pool, self.client, self.reused = pool, client, reused
        self.keep: bool | None = None

    def replace(self) -> smtplib.SMTP:
        """Close this connection and open a fresh one in its place (the pool's slot stays taken)."""
        discard(self.client, polite=False)
        self.client, self.reused = self.pool.connect(), False
        return self.client


class SmtpConnections:
    """Up to `size` connections made by `connect`, kept between mails for `idle_s` seconds at most."""

    def __init__(self, connect: Callable[[], smtplib.SMTP], size: int, idle_s: float, wait_s: float) -> None:
        if size < 1:
            raise ValueError("size must be 1 or more")
        self._connect, self.size, self.idle_s, self.wait_s = connect, size, idle_s, wait_s
        # connections in use; one is opened only when none is kept, so in use + kept never exceeds `size`
        self._slots = threading.BoundedSemaphore(size)
        self._kept: list[_Kept] = []  # most recently used last: reused first, so spare ones age out
        self._lock = threading.Lock()
        self._closed = False

    def connect(self) -> smtplib.SMTP:
        """A fresh connection that has greeted the server (EHLO)."""
        client = self._connect()
        try:
            client.ehlo_or_helo_if_needed()
        except BaseException:
            discard(client, polite=False)
            raise
        return client

    @contextlib.contextmanager
    def lease(self) -> Iterator[Lease]:
        """A connection for one mail: a kept one that is still good, else a new one. It goes back to the pool
        afterwards unless the block set `keep` False, raised without setting it, or the pool keeps none
        (`idle_s` <= 0)."""
        if not self._slots.acquire(timeout=self.wait_s):
            raise ConnectionsBusy(f"all {self.size} SMTP connections stayed busy for {self.wait_s:g} s")
        try:
            lease = self._take()
            try:
                yield lease
            except BaseException:
                lease.keep = bool(lease.keep)  # undecided: the connection's state is unknown
                raise
            finally:
                self._give_back(lease)
        finally:
            self._slots.release()

    def _take(self) -> Lease:
        now = time.monotonic()
        while True:
            with self._lock:
                kept = self._kept.pop() if self._kept else None
            if kept is None:
                return Lease(self, self.connect(), reused=False)
            if self._usable(kept, now):
                return Lease(self, kept.client, reused=True)
            discard(kept.client, polite=False)  # a QUIT could wait out the timeout on a dropped connection

    def _usable(self, kept: _Kept, now: float) -> bool:
        idle = now - kept.idle_since
        if idle > self.idle_s or _closed_by_server(kept.client):
            return False
        return idle <= NOOP_AFTER_IDLE_S or answers_ok(kept.client.noop)

    def _give_back(self, lease: Lease) -> None:
        if lease.keep is not False and self.idle_s > 0:
            with self._lock:
                if not self._closed:
                    self._kept.append(_Kept(lease.client, time.monotonic()))
                    return
        discard(lease.client, polite=lease.keep is not False)

    def close(self) -> None:
        """Close every kept connection (QUIT); connections in use are closed when their mail is done."""
        with self._lock:
            self._closed, kept, self._kept = True, self._kept, []
        for k in kept:
            discard(k.client)
