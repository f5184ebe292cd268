"""A lean HTTP/1.1 client for the load generator: keep-alive connections, one request at a time each.

aiohttp spends ~150 µs of CPU per request on this machine, which caps one generator process below
the rates it promises once the server shares the cores; this client spends a fraction of that, so
`amctl events send` stays on schedule. It does only what the generator needs: GET and POST of
JSON, responses framed by Content-Length, chunked encoding or the connection closing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

from amctl.errors import AmctlError


class HttpProtocolError(AmctlError):
    """The server answered with something that is not an HTTP/1.1 response."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise HttpProtocolError(f"not an HTTP/1.1 status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return int(parts[1]), headers


def _chunked_body(data: bytearray, start: int) -> tuple[bytes, int] | None:
    """The body of a chunked message starting at `start` and where it ends, or None if incomplete."""
    body, at = bytearray(), start
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(data[at:line_end]).split(b";")[0], 16)
        if size == 0:  # the last chunk: then optional trailer lines, then an empty line
            trailer_end = data.find(b"\r\n\r\n", line_end)
            return None if trailer_end < 0 else (bytes(body), trailer_end + 4)
        if len(data) < line_end + 2 + size + 2:
            return None
        body += data[line_end + 2:line_end + 2 + size]
        at = line_end + 2 + size + 2


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self._until_close: int | None = None  # status of a response whose body ends when the connection does

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None and self.waiter is None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self._until_close is None:
            try:
                self._parse()
            except (HttpProtocolError, ValueError) as exc:
                self._fail(HttpProtocolError(str(exc)))

    def _parse(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        status, headers = _parse_head(bytes(self.buffer[:end]))
        if headers.get("connection", "").lower() == "close":
            self.reusable = False
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parsed = _chunked_body(self.buffer, end + 4)
            if parsed is None:
                return
            body, consumed = parsed
        elif "content-length" in headers:
            consumed = end + 4 + int(headers["content-length"])
            if len(self.buffer) < consumed:
                return
            body = bytes(self.buffer[end + 4:consumed])
        else:
            self._until_close, self.reusable = status, False
            del self.buffer[:end + 4]
            return
        del self.buffer[:consumed]
        self._resolve(Response(status, body))

    def _resolve(self, response: Response) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)
        if not self.reusable and self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._until_close is not None:
            self._resolve(Response(self._until_close, bytes(self.buffer)))
        else:
            self._fail(ConnectionResetError("the server closed the connection"))

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class HttpPool:
    """Keep-alive connections to one server; a request takes an idle connection or opens one.

    The caller bounds how many requests are in flight (the load runner's concurrency), and so
    how many connections there are.
    """

    def __init__(self, base_url: str, timeout_s: float = 10.0, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the load generator speaks plain http:// only, not {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.timeout_s = timeout_s
        extra = {"Host": f"{self.host}:{self.port}", "Content-Type": "application/json", **(headers or {})}
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in extra.items()).encode("latin-1")
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    def _encode(self, method: str, target: str, body: bytes | None) -> bytes:
        head = f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + self._headers
        if body is None:
            return head + b"\r\n"
        return head + f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1") + body

    async def request(self, method: str, target: str, body: bytes | None = None) -> Response:
        """`target` is the path (and query) on the server, e.g. `/api/events`."""
        async with asyncio.timeout(self.timeout_s):
            connection = self._idle.pop() if self._idle else await self._connect()
            try:
                response = await connection.send(self._encode(method, target, body))
            except BaseException:
                connection.close()
                self._open.discard(connection)
                raise
        if connection.reusable:
            self._idle.append(connection)
        else:
            self._open.discard(connection)
        return response

    async def _connect(self) -> _Connection:
        _, connection = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
        self._open.add(connection)
        return connection

    async def close(self) -> None:
        for connection in self._open:
            connection.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> HttpPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
