"""POST /api/events and /api/events/batch without FastAPI's per-request machinery, for the requests that need none.

The FastAPI routes stay the reference: they own the OpenAPI schema and every error answer. In front of
them (inside the body limit and the HTTP metrics), `EventFastPath` takes a request only when it is the
common kind: no query string, a JSON content type, a key good for writing when keys are on, and a
body that parses and validates. It then does what the route does (`answers`) and writes the encoded
answer itself. Anything else (a body that does not parse, fails validation or holds an unstorable
value, a missing or weak key) goes on to the route unchanged, its body replayed, so each error is
answered by the same code as before. What the fast path refuses after admitting (429, 503) is
answered by the app's own exception handlers.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.ingestion_api.answers import accept_batch, accept_event
from server.ingestion_api.ingestor import Ingestor, client_name
from server.ingestion_api.schemas import MAX_BATCH_EVENTS, EventIn
from server.runtime.api_keys import ApiKeys
from server.runtime.api_keys import Scope as KeyScope
from server.runtime.storable import is_storable

EVENTS, BATCH = "/api/events", "/api/events/batch"
Handler = Callable[[Request, Any], Response | Awaitable[Response]]
Answer = Callable[[Ingestor, bytes, str], Awaitable[tuple[int, bytes] | None]]


class EventFastPath:
    """Pure ASGI middleware serving valid event posts directly; every other request goes on to the app."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._answers: dict[str, Answer] = {EVENTS: _one, BATCH: _batch}
        self._routes = {route.path: route for route in routes if isinstance(route, APIRoute)
                        and route.path in self._answers and "POST" in (route.methods or ())}
        if self._routes.keys() != self._answers.keys():
            raise ValueError(f"EventFastPath serves {sorted(self._answers)}; the routes given: {sorted(self._routes)}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = self._answers.get(scope["path"]) if scope["type"] == "http" else None
        if answer is None or scope["method"] != "POST" or scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        app: FastAPI = scope["app"]
        client = _writer(app.state.api_keys, scope)
        if client is None:
            await self.app(scope, receive, send)
            return
        messages, raw = await _read_body(receive)
        if raw is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        scope["route"] = self._routes[scope["path"]]  # the HTTP metrics label it by its template, as routed
        try:
            answered = await answer(app.state.ingestor, raw, client)
        except Exception as exc:  # whatever the app maps to an answer (429, 503, ...) is answered so; the rest goes up
            handler = _handler(app, exc)
            if handler is None:
                raise
            response = handler(Request(scope, receive), exc)
            await (await response if inspect.isawaitable(response) else response)(scope, receive, send)
            return
        if answered is None:
            await self.app(scope, _replay(messages, receive), send)
            return
        status, body = answered
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


async def _one(ingestor: Ingestor, raw: bytes, client: str) -> tuple[int, bytes] | None:
    try:
        body = EventIn.model_validate_json(raw)
    except ValidationError:
        return None
    # as deep as the route's check of the whole body sees them: the properties are one level down
    if not is_storable({"properties": body.properties}):
        return None
    return 202, await accept_event(ingestor, body, client)


async def _batch(ingestor: Ingestor, raw: bytes, client: str) -> tuple[int, bytes] | None:
    try:  # pydantic's parser, as the single path: integers beyond 64 bits stay integers (the check refuses them)
        value = pydantic_core.from_json(raw, allow_inf_nan=False)
    except ValueError:
        return None
    events = value.get("events") if isinstance(value, dict) and len(value) == 1 else None
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_BATCH_EVENTS \
            or not all(isinstance(event, dict) for event in events):
        return None
    return await accept_batch(ingestor, events, client)  # each event is judged on its own, as the route does


def _writer(keys: ApiKeys, scope: Scope) -> str | None:
    """Whose rate the request counts against, when it may write; None to leave the answer to the app."""
    content_type = api_key = None
    for name, value in scope["headers"]:  # the first of each, as Starlette's headers read them
        if name == b"content-type" and content_type is None:
            content_type = value
        elif name == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1")
    if content_type is None or content_type.lower() != b"application/json":
        return None
    caller = None
    if keys.enabled:
        principal = keys.authenticate(api_key) if api_key else None
        if principal is None or principal.scope < KeyScope.WRITE:
            return None
        caller = f"key:{principal.key_id}"
    peer = scope.get("client")
    return client_name(caller, api_key, peer[0] if peer else None)


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The messages received and the whole body (None when the client went away first)."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """`receive` as it was before the fast path read from it."""
    pending = deque(messages)

    async def replayed() -> Message:
        return pending.popleft() if pending else await receive()

    return replayed


def _handler(app: FastAPI, exc: Exception) -> Handler | None:
    """The app's handler for `exc`, looked up along its classes as Starlette's exception middleware does
    (a handler for Exception itself is the server-error one, which answers further out)."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        handler = app.exception_handlers.get(cls)
        if handler is not None:
            return handler
    return None
