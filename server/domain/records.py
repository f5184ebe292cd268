"""Reading the fields of a record that crossed a topic: each check names the field it refused.

The messages' `from_json` constructors use these, so a record that is valid JSON but not the
message it claims to be is an `InvalidRecord` (a ValueError), never a KeyError or TypeError
further on, nor a value the stores behind the consumer would refuse (which would stop it on
every retry).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TypeGuard

from server.domain.timeutil import parse_timestamp

MAX_VERSION = 2**31 - 1  # segment versions are PostgreSQL integers
MAX_COUNT = 2**63 - 1  # counters are PostgreSQL bigints
MAX_USER_ID_CHARS = 128  # what the APIs accept; the stores index user ids, and an index entry is bounded
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class InvalidRecord(ValueError):
    """A decoded record that is not the message it should be; the message names the field."""


def json_object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidRecord(f"{what}: expected a JSON object")
    return data


def text(data: Mapping[str, Any], name: str) -> str:
    """A required, non-empty string."""
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRecord(f"{name}: required, a non-empty string")
    return value


def one_of(data: Mapping[str, Any], name: str, choices: Sequence[str], default: str | None = None) -> Any:
    """One of a few words (a `Literal` field: the caller's type names which)."""
    value = data.get(name, default)
    if value not in choices:
        raise InvalidRecord(f"{name}: expected {' or '.join(choices)}, got {value!r}")
    return value


def user_id(data: Mapping[str, Any], name: str = "userId") -> str:
    """A required user id, at most MAX_USER_ID_CHARS long."""
    value = text(data, name)
    if len(value) > MAX_USER_ID_CHARS:
        raise InvalidRecord(f"{name}: at most {MAX_USER_ID_CHARS} characters")
    return value


def uuid_text(data: Mapping[str, Any], name: str) -> str:
    """A required id in the canonical UUID form the Segment API gives segments."""
    value = text(data, name)
    if not _UUID.fullmatch(value):
        raise InvalidRecord(f"{name}: expected a UUID such as 4b0e3f6c-8d2a-4c1e-9f7b-2a5d6e8c9b10")
    return value


def integer(data: Mapping[str, Any], name: str, high: int, default: int | None = None) -> int:
    """A whole number from 0 to `high`; `default` when absent (not when null), if given."""
    if name not in data and default is not None:
        return default
    value = data.get(name)
    if not whole(value, high):
        raise InvalidRecord(f"{name}: required, an integer from 0 to {high}")
    return value


def whole(value: Any, high: int) -> TypeGuard[int]:
    """Whether `value` is a whole number from 0 to `high` (a JSON boolean is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high


def number(value: Any) -> bool:
    """Whether `value` is a JSON number (a boolean is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def timestamp(data: Mapping[str, Any], name: str) -> datetime:
    """A required ISO-8601 timestamp."""
    value = data.get(name)
    if not isinstance(value, str):
        raise InvalidRecord(f"{name}: required, an ISO-8601 timestamp")
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise InvalidRecord(f"{name}: {exc}") from None


def optional_timestamp(data: Mapping[str, Any], name: str) -> datetime | None:
    """An ISO-8601 timestamp, or None when the field is absent or null."""
    return None if data.get(name) is None else timestamp(data, name)
