"""HTTP routes of `/api/suppressions`: the addresses no campaign mails, why, and since when.

Reads need the read scope and adding an address the write scope. Removing one needs admin: it mails
again someone who asked for no mail, or whose mailbox refused it, which is not a dashboard key's call.
An address is matched as the suppression list stores it (trimmed, lower-cased), in the path as in a body.

Adding an address that is already suppressed answers 200 with the entry as it was (its first reason and
detail kept) rather than 409: the caller asked for the address not to be mailed, and it is not; an import
or a retried call then needs no error handling for a state that is what it wanted.
"""

from __future__ import annotations

import re
import urllib.parse
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic import AfterValidator, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from server.domain.email import normalized_address
from server.runtime.auth import REQUIRED_SCOPE
from server.runtime.errors import NotFound
from server.runtime.fields import ONE_LINE, ApiModel
from server.runtime.routing import StorableRoute
from server.stores.suppressions import Suppression, SuppressionList, SuppressionReason

MAX_ADDRESS_CHARS: Final = 254  # RFC 5321's 256-octet path, less its angle brackets
MAX_LOCAL_PART_CHARS: Final = 64
MAX_LABEL_CHARS: Final = 63
MAX_DETAIL_CHARS: Final = 1000
ADMIN: Final[dict[str, Any]] = {REQUIRED_SCOPE: "admin"}
NOT_FOUND: Final[dict[int | str, dict[str, Any]]] = {404: {"description": "The address is not suppressed"}}
# whitespace and control characters, and the separators of a pasted "Name <a@b>" or of two addresses
_NOT_IN_ADDRESS = re.compile(r"[\s\x00-\x1f\x7f<>,;]")
_LABEL = re.compile(r"^[^\W_](?:[\w-]*[^\W_])?$")  # letters and digits (any script), hyphens inside


def _refused(value: str, why: str) -> PydanticCustomError:
    return PydanticCustomError("email_address", "'{value}' is not an email address: {why}",
                               {"value": value[:60], "why": why})


def mailbox(value: str) -> str:
    """`value` as the suppression list stores it (trimmed, lower-cased), once it has the shape local@domain."""
    address = normalized_address(value)
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise _refused(address, "it needs the form name@example.com")
    if _NOT_IN_ADDRESS.search(address):
        raise _refused(address, "it holds a space, a control character or one of < > , ;")
    if len(local) > MAX_LOCAL_PART_CHARS:
        raise _refused(address, f"the part before @ is longer than {MAX_LOCAL_PART_CHARS} characters")
    labels = domain.split(".")
    if len(labels) < 2 or not all(len(label) <= MAX_LABEL_CHARS and _LABEL.match(label) for label in labels):
        raise _refused(address, "the part after @ is not a domain name such as example.com")
    return address


Address = Annotated[str, Field(min_length=1, max_length=MAX_ADDRESS_CHARS, examples=["ann@example.com"],
                               description="An email address; matched trimmed and lower-cased"),
                    AfterValidator(mailbox)]


class ReasonByHand(StrEnum):
    """The reasons a caller may give: bounces and the emailOptOut trait are recorded by the platform."""

    MANUAL = "manual"
    UNSUBSCRIBED = "unsubscribed"  # an unsubscribe that arrived some other way: a reply, a call, a letter


class SuppressionCreate(ApiModel):
    address: Address
    reason: ReasonByHand = Field(default=ReasonByHand.MANUAL,
                                 description="manual, or unsubscribed for an unsubscribe received by other means")
    detail: str | None = Field(default=None, min_length=1, max_length=MAX_DETAIL_CHARS, pattern=ONE_LINE,
                               examples=["asked by phone, ticket 4411"], description="Why, for whoever reads it later")


class SuppressionPublic(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    address: str
    reason: SuppressionReason = Field(description="unsubscribed (one-click link or by hand), hard_bounce (a "
                                                  "permanent refusal at send time), opted_out (the emailOptOut "
                                                  "trait) or manual")
    campaign_id: str | None = Field(description="The campaign whose mail led to it (unsubscribe, bounce)")
    user_id: str | None = Field(description="Whose address it was when it was added; erasing the user clears it")
    detail: str | None
    created_at: datetime


class SuppressionPage(ApiModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    items: list[SuppressionPublic]
    total: int = Field(description="Entries with this reason (or in all), on every page")
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last one")


def get_suppressions(request: Request) -> SuppressionList:
    return request.app.state.suppressions  # type: ignore[no-any-return]


Suppressions = Annotated[SuppressionList, Depends(get_suppressions)]
# `:path`: a local part may hold a '/' (percent-encoded by the caller), and the address is the whole rest
AddressInPath = Annotated[str, Path(min_length=1, max_length=MAX_ADDRESS_CHARS, description="An email address"),
                          AfterValidator(mailbox)]

suppressions = APIRouter(prefix="/api/suppressions", tags=["suppressions"], route_class=StorableRoute)


def public(entry: Suppression) -> SuppressionPublic:
    return SuppressionPublic(address=entry.address, reason=entry.reason, campaign_id=entry.campaign_id,
                             user_id=entry.user_id, detail=entry.detail, created_at=entry.created_at)


def location(address: str) -> str:
    return f"/api/suppressions/{urllib.parse.quote(address, safe='@+')}"


@suppressions.get("", response_model=SuppressionPage, summary="The suppressed addresses in address order, by cursor")
async def list_suppressions(
    store: Suppressions,
    reason: Annotated[SuppressionReason | None, Query(description="Only entries with this reason")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(min_length=1, max_length=MAX_ADDRESS_CHARS,
                                        description="nextCursor of the previous page (the last address it held)")
                      ] = None,
) -> SuppressionPage:
    entries = await store.page(reason, cursor, limit + 1)  # one more tells whether a next page exists
    page = entries[:limit]
    return SuppressionPage(items=[public(e) for e in page], total=await store.count(reason),
                           next_cursor=page[-1].address if len(entries) > limit else None)


@suppressions.get("/{address:path}", response_model=SuppressionPublic, responses=NOT_FOUND,
                  summary="Whether an address is suppressed: its entry, or 404")
async def get_suppression(address: AddressInPath, store: Suppressions) -> SuppressionPublic:
    entry = await store.get(address)
    if entry is None:
        raise NotFound(f"{address} is not suppressed")
    return public(entry)


@suppressions.post("", status_code=status.HTTP_201_CREATED, response_model=SuppressionPublic,
                   summary="Suppress an address: no campaign mails it from now on",
                   responses={200: {"model": SuppressionPublic,
                                    "description": "Already suppressed: the entry as it was, first reason kept"},
                              422: {"description": "Not an address, over 254 characters, or a reason that is "
                                                   "not manual or unsubscribed"}})
async def add_suppression(body: SuppressionCreate, store: Suppressions, response: Response) -> SuppressionPublic:
    entry, added = await store.add_new(body.address, SuppressionReason(body.reason.value), detail=body.detail)
    if not added:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = location(entry.address)
    return public(entry)


@suppressions.delete("/{address:path}", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=ADMIN,
                     responses=NOT_FOUND,
                     summary="Mail an address again (admin); a bounce or the emailOptOut trait suppresses it anew")
async def remove_suppression(address: AddressInPath, store: Suppressions) -> Response:
    if not await store.remove(address):
        raise NotFound(f"{address} is not suppressed")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
