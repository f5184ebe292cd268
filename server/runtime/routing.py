"""The route class every service's routers use: nothing unstorable gets past the door.

Before FastAPI validates anything, each JSON body is checked with `server.runtime.storable` (lone
surrogates, NUL, non-finite numbers, integers beyond 64 bits, anywhere, keys included), and so are
the path and query parameters (also for percent-encoded bytes that are not UTF-8, which Starlette
would otherwise turn into U+FFFD). A refusal is a 422 in FastAPI's shape naming the field
(`{"detail": [{"loc": ["body", "userId"], "msg": ..., "type": "unstorable_value"}]}`), so no route
checks by hand and no unencodable value reaches pydantic's error echo, the broker or PostgreSQL.

A route whose body carries items it judges one by one (the event batch: a bad event is rejected
while the others are accepted) names that field with `openapi_extra={PER_ITEM: "events"}`; the items
of that list are then left to the route, everything else in the body is still checked here.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from server.runtime.storable import Location, Problem, printable, string_problem, unstorable

PER_ITEM = "x-items-judged-one-by-one"
UNSTORABLE = "unstorable_value"
NOT_UTF8 = "percent-encodes bytes that are not UTF-8 text"


class UnstorableInput(HTTPException):
    """A request carrying a value that cannot be stored as sent: 422 naming each place.

    An HTTPException because FastAPI lets those out of its body parsing unchanged (any other error
    raised there becomes a 400); the detail is already in FastAPI's 422 shape and safe to encode.
    """

    def __init__(self, problems: Iterable[Problem]) -> None:
        super().__init__(422, [{"loc": list(loc), "msg": message, "type": UNSTORABLE} for loc, message in problems])


class StorableRequest(Request):
    """A request whose JSON body is refused (UnstorableInput) when anything in it cannot be stored."""

    per_item: str | None = None

    async def json(self) -> Any:
        value = await super().json()
        problems = unstorable(_judged_here(value, self.per_item), ("body",))
        if problems:
            raise UnstorableInput(problems)
        return value


def _judged_here(body: Any, per_item: str | None) -> Any:
    """The body without the items the route judges one by one (when they are a list, as documented)."""
    if per_item is None or not isinstance(body, dict) or not isinstance(body.get(per_item), list):
        return body
    return {key: value for key, value in body.items() if key != per_item}


def parameter_problems(request: Request) -> list[Problem]:
    """Path and query parameters that are not storable text, named `("path", name)` / `("query", name)`."""
    path_params = request.scope.get("path_params") or {}
    problems: list[Problem] = [(("path", name), problem) for name, value in path_params.items()
                               if isinstance(value, str) and (problem := string_problem(value))]
    raw_path = request.scope.get("raw_path")
    if isinstance(raw_path, bytes) and (b"%" in raw_path or not raw_path.isascii()) and not problems \
            and not _is_utf8(unquote_to_bytes(raw_path)):
        problems += [(("path", name), NOT_UTF8) for name, value in path_params.items()
                     if isinstance(value, str) and "\ufffd" in value] or [(("path",), NOT_UTF8)]
    query = request.scope.get("query_string")
    if query:
        problems += _query_problems(query)
    return problems


def _query_problems(query: bytes) -> list[Problem]:
    problems: list[Problem] = []
    for pair in query.split(b"&"):
        raw_name, _, raw_value = pair.partition(b"=")
        name_bytes, value_bytes = (unquote_to_bytes(part.replace(b"+", b" ")) for part in (raw_name, raw_value))
        loc: Location = ("query", printable(name_bytes.decode("utf-8", "backslashreplace")))
        for part, what in ((name_bytes, "name"), (value_bytes, "value")):
            if not _is_utf8(part):
                problems.append((loc, f"{what} {NOT_UTF8}"))
            elif problem := string_problem(part.decode("utf-8")):
                problems.append((loc, f"{what} {problem}"))
    return problems


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class StorableRoute(APIRoute):
    """An APIRoute that refuses unstorable parameters and JSON bodies before FastAPI validates them."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        per_item = _per_item(self.openapi_extra)

        async def checked(request: Request) -> Response:
            problems = parameter_problems(request)
            if problems:
                raise UnstorableInput(problems)
            storable = StorableRequest(request.scope, request.receive)
            storable.per_item = per_item
            return await handle(storable)

        return checked


def _per_item(openapi_extra: Mapping[str, Any] | None) -> str | None:
    field = (openapi_extra or {}).get(PER_ITEM)
    return field if isinstance(field, str) else None
