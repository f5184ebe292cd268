"""Field types the services' request schemas share, so every API draws the same lines.

PostgreSQL cannot store NUL in text or JSON, and a control character has no place in a
one-line name; both are refused with a 422 naming the field, never met as a 500 at the store.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


ID_PATTERN = r"^[A-Za-z0-9_.:@+\-]+$"
MAX_ID_CHARS = 128
ONE_LINE = r"^[^\x00-\x1f\x7f]*$"
NO_NUL = r"^[^\x00]*$"
MAX_VERSION = 2**31 - 1  # versions are PostgreSQL integers
MAX_OFFSET = 1_000_000_000

def storable_json(value: Any) -> bytes:
    """`value` as the platform encodes it (orjson), or ValueError saying why it cannot travel.

    Integers beyond 64 bits and NUL characters pass JSON parsing but break the broker records,
    the rule job's state or PostgreSQL JSON further on, so the APIs refuse them at the door.
    """
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"cannot be stored: {exc}") from None
    if b"\\u0000" in encoded:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return encoded


UserId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                              description="Letters, digits and _ . : @ + -")]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=ONE_LINE)]
ResourceId = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN)]
