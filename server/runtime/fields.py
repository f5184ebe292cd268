"""Field types the services' request schemas share, so every API draws the same lines.

What can be stored at all (no NUL, no lone surrogates, finite numbers, 64-bit integers) is decided
once in `server.runtime.storable` and checked on every request by `server.runtime.routing`; the
types here add the shapes: a control character has no place in a one-line name, an id has a charset.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from server.domain.records import MAX_USER_ID_CHARS


class ApiModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


ID_PATTERN = r"^[A-Za-z0-9_.:@+\-]+$"
MAX_ID_CHARS = MAX_USER_ID_CHARS  # the readers behind the topics hold ids to the same bound
ONE_LINE = r"^[^\x00-\x1f\x7f]*$"
NO_NUL = r"^[^\x00]*$"
MAX_OFFSET = 1_000_000_000


UserId = Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                              description="Letters, digits and _ . : @ + -")]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=ONE_LINE)]
ResourceId = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN)]
