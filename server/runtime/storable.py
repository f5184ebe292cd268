"""What the platform can store and carry: the one decision every service and the rule job share.

Valid JSON is not always storable. A lone surrogate escape (`"\\ud800"`) parses into a Python
string that cannot be encoded as UTF-8, so PostgreSQL, the broker and every JSON encoder refuse
it; NUL cannot be stored in PostgreSQL text or JSON; `NaN`, `Infinity` and numbers that overflow
to infinity (`1e400`) have no JSON encoding at all (orjson writes them as `null`, silently losing
the value); integers beyond 64 bits break orjson and the rule job's state. Each is refused here,
with the place it was found, so the caller can answer a 422 that names the field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

Location = tuple[str | int, ...]
Problem = tuple[Location, str]

_SURROGATE = re.compile("[\ud800-\udfff]")
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1  # what orjson encodes
_MAX_DEPTH = 64  # deeper than any document the platform accepts; guards the walk's recursion


class UnstorableValue(ValueError):
    """A value that cannot be stored or carried as sent; `problems` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{describe(loc)}: {message}" for loc, message in problems))


def describe(loc: Location) -> str:
    """`('body', 'properties', 'amount')` as `body.properties.amount`, the way 422 answers name fields."""
    return ".".join(str(part) for part in loc) or "value"


def string_problem(text: str) -> str | None:
    """Why `text` cannot be stored, or None."""
    if not text.isascii():  # the common case, ASCII, holds no surrogate: skip the search
        found = _SURROGATE.search(text)
        if found:
            return f"contains a lone surrogate (\\u{ord(found.group()):04x}), which is not storable text"
    if "\x00" in text:
        return "must not contain NUL (\\u0000) characters"
    return None


def number_problem(number: float | int) -> str | None:
    """Why `number` cannot be stored, or None."""
    if isinstance(number, bool):
        return None
    if isinstance(number, float):
        return None if math.isfinite(number) else f"must be a finite number, not {number!r}"
    if not _MIN_INT <= number <= _MAX_INT:
        return "integer out of range (at most 64 bits)"
    return None


def unstorable(value: Any, loc: Location = ()) -> list[Problem]:
    """Every place in a decoded JSON value (and its object keys) that cannot be stored as sent."""
    problems: list[Problem] = []
    _walk(value, loc, problems, 0)
    return problems


def _walk(value: Any, loc: Location, problems: list[Problem], depth: int) -> None:
    keyed = isinstance(value, dict | Mapping)  # dict first: what JSON decodes to, and faster than the ABC
    if keyed:
        children: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list | tuple) or (isinstance(value, Sequence) and not isinstance(value, str | bytes)):
        children = enumerate(value)
    else:
        problem = _scalar_problem(value)
        if problem:
            problems.append((loc, problem))
        return
    if depth >= _MAX_DEPTH:
        problems.append((loc, f"nested deeper than {_MAX_DEPTH} levels"))
        return
    for key, item in children:
        if keyed and isinstance(key, str) and (key_problem := string_problem(key)):
            key = printable(key)
            problems.append(((*loc, key), f"key {key_problem}"))
        if isinstance(item, str | int | float) or item is None:  # scalars inline: no location built unless needed
            problem = _scalar_problem(item)
            if problem:
                problems.append(((*loc, key), problem))
        else:
            _walk(item, (*loc, key), problems, depth + 1)


def _scalar_problem(value: Any) -> str | None:
    if isinstance(value, str):
        return string_problem(value)
    if isinstance(value, int | float):
        return number_problem(value)
    return None


def printable(text: Any) -> str:
    """`text` fit to be echoed back in an error: unstorable characters shown as escapes."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", str(text)).replace("\x00", "\\u0000")


def echoable(value: Any, depth: int = 0) -> Any:
    """A copy of `value` that any JSON encoder can write, for error answers that quote what was sent.

    Lone surrogates and NUL become escapes, non-finite numbers their name, bytes their text (invalid
    UTF-8 as escapes), exceptions their message, tuples lists, anything nested deeper than the walk
    "..."; anything else is left for the encoder.
    """
    if isinstance(value, str):
        return printable(value) if string_problem(value) else value
    if isinstance(value, BaseException):
        return echoable(str(value))
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, bytes | bytearray):
        return echoable(bytes(value).decode("utf-8", "backslashreplace"))
    if isinstance(value, Mapping | list | tuple) and depth >= _MAX_DEPTH:
        return "..."
    if isinstance(value, Mapping):
        return {echoable(key): echoable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [echoable(item, depth + 1) for item in value]
    return value


def require_storable(value: Any, loc: Location = ()) -> None:
    """Raise UnstorableValue when `value` holds anything `unstorable` finds."""
    problems = unstorable(value, loc)
    if problems:
        raise UnstorableValue(problems)


def encode(value: Any) -> bytes:
    """`value` as the platform encodes it (orjson), or UnstorableValue saying where it cannot travel."""
    encoded = _plainly_storable(value)
    if encoded is not None:
        return encoded
    require_storable(value)
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:  # a type JSON has no form for
        raise UnstorableValue([((), f"cannot be encoded as JSON: {exc}")]) from None


def is_storable(value: Any) -> bool:
    """Whether `unstorable` would find nothing in `value` (most often without walking it)."""
    return _plainly_storable(value) is not None or not unstorable(value)


def _plainly_storable(value: Any) -> bytes | None:
    """`value` encoded, when the encoding itself shows that the walk would find nothing; else None.

    orjson refuses lone surrogates and integers beyond 64 bits, writes NUL as an escape and non-finite
    numbers as null: bytes without `\\u0000` or `null`, with fewer brackets than the walk's depth limit,
    hold no unstorable value. Anything else (a real null too) is left to the walk, which says where.
    """
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None
    if b"null" in encoded or not _shows_no_nul_or_depth(encoded):
        return None
    return encoded


def decode(raw: bytes | str) -> Any:
    """A record read back from a topic or a store: strict JSON (no NaN, no lone surrogates), storable.

    Raises UnstorableValue for anything else, so a consumer can skip a bad record instead of dying on it.
    """
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UnstorableValue([((), f"not valid JSON: {exc}")]) from None
    # orjson's parser already refuses lone surrogates, NaN and Infinity, numbers that overflow to infinity and
    # control characters in strings, and turns integers beyond 64 bits into floats: only NUL and depth are left
    if not _shows_no_nul_or_depth(raw):
        require_storable(value)
    return value


def _shows_no_nul_or_depth(text: bytes | str) -> bool:
    """Whether JSON text holds no `\\u0000` escape (the only way NUL gets into it) and fewer brackets than the walk's
    depth limit; when it does not show that (a bracket inside a string too), the walk decides."""
    if isinstance(text, str):
        return "\\u0000" not in text and text.count("{") + text.count("[") < _MAX_DEPTH
    return b"\\u0000" not in text and text.count(b"{") + text.count(b"[") < _MAX_DEPTH
