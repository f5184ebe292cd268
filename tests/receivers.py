"""A destination for tests: a real local HTTP server that answers each path as told and keeps every request."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # past the worker's timeout: the destination never answers in time
    body: str = "ok"


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: str
    reply: Reply
    at: float  # monotonic, on arrival

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    """A destination: answers each path as told (`answer`), and records every request it gets."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[Received] = []
        self.replies: dict[str, Callable[[int], Reply]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                with receiver.lock:
                    earlier = sum(1 for r in receiver.requests if r.path == self.path)
                    reply = receiver.replies.get(self.path, lambda _: Reply())(earlier)
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                                      body, reply, time.monotonic()))
                time.sleep(reply.delay_s)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("content-length", str(len(reply.body.encode())))
                    self.end_headers()
                    self.wfile.write(reply.body.encode())
                except OSError:  # the worker gave up waiting and closed the connection
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def answer(self, path: str, reply: Reply | Callable[[int], Reply]) -> None:
        """How `path` answers from now on: one reply, or one per request (by how many came before)."""
        with self.lock:
            self.replies[path] = reply if callable(reply) else (lambda _: reply)

    def received(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def status_url(self, code: int = 200) -> str:
        """A URL of its own answering `code` (with a body naming it), so tests sharing the receiver never see
        each other's calls."""
        path = f"/status/{code}/{uuid.uuid4().hex}"
        self.answer(path, Reply(code, body=f"answer {code} from the receiver"))
        return self.url(path)

    def calls(self, url: str) -> list[Received]:
        """The requests that came to `url`."""
        return self.received(url.split(str(self.server.server_address[1]), 1)[1])


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
