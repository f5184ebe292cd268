"""Stand-ins for the Ingestion API that do no work, to measure against.

`python -m amctl.load.bare PORT`: a bare FastAPI endpoint with the same request shape as the
Ingestion API; it validates the body and answers 202 without a broker (the throughput ratio).
`python -m amctl.load.bare PORT --raw`: an asyncio HTTP/1.1 responder that answers 202 to anything,
far faster than the load generator, to measure the generator's own accuracy.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Event(BaseModel):
    userId: str
    eventType: str
    properties: dict[str, Any] = {}


class Batch(BaseModel):
    events: list[dict[str, Any]]


@app.post("/api/events", status_code=202)
async def event(body: Event) -> dict[str, str]:
    return {"status": "accepted"}


@app.post("/api/events/batch", status_code=202)
async def batch(body: Batch) -> dict[str, int]:
    return {"accepted": len([Event.model_validate(e) for e in body.events])}


ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class RawResponder(asyncio.Protocol):
    """Reads requests (headers, then Content-Length bytes of body) and answers each with 202."""

    def __init__(self) -> None:
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return  # the body has not all arrived
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(ACCEPTED)


async def serve_raw(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(RawResponder, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    if "--raw" in sys.argv[2:]:
        asyncio.run(serve_raw(int(sys.argv[1])))
    else:
        uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
