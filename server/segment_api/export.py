"""`GET /api/segments/{id}/members/export`: every member of a segment as CSV or JSON lines, streamed.

Members are read a page at a time in user-id order (one `segment_members` call, then one
`get_profiles` for the page's traits when any are asked for) and each page is encoded and sent
before the next is read, so the service's memory does not grow with the segment.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import unicodedata
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from server.domain.timeutil import format_timestamp
from server.runtime.errors import InvalidInput
from server.runtime.routing import StorableRoute
from server.segment_api.routes import Repository, Store
from server.stores.profile_store import Membership, ProfileStore, trait_at

log = logging.getLogger("segment-api.export")

EXPORT_PAGE = 1000
MAX_TRAITS = 50
MAX_TRAIT_CHARS = 128  # as a rule's field name
COLUMNS = ("userId", "enteredAt", "segmentVersion", "source")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_TRAIT = re.compile(r"[^\x00-\x1f\x7f.,]+(?:\.[^\x00-\x1f\x7f.,]+)*")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")

export = APIRouter(prefix="/api/segments", tags=["segments"], route_class=StorableRoute)


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


MEDIA_TYPES = {ExportFormat.CSV: "text/csv; charset=utf-8", ExportFormat.JSONL: "application/x-ndjson"}


def trait_names(traits: str | None) -> list[str]:
    """The trait paths of `traits=a,b.c`: each a name or a dotted path into nested traits; 422 naming
    `traits` otherwise."""
    if traits is None or traits == "":
        return []
    names = traits.split(",")

    def refuse(message: str) -> InvalidInput:
        return InvalidInput(f"traits: {message}", [(["query", "traits"], message)])

    if len(names) > MAX_TRAITS:
        raise refuse(f"at most {MAX_TRAITS} trait names, got {len(names)}")
    for name in names:
        if len(name) > MAX_TRAIT_CHARS or not _TRAIT.fullmatch(name):
            raise refuse(f"{name!r} is not a trait path such as plan or address.city (up to {MAX_TRAIT_CHARS}"
                         " characters, no control characters, no empty part)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise refuse(f"named more than once: {', '.join(repeated)}")
    return names


def slug(name: str) -> str:
    """A segment name as a file name: ASCII letters and digits joined by dashes."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    return _NOT_SLUG.sub("-", ascii_name).strip("-")[:80].strip("-") or "segment"


def records(members: Sequence[Membership], profiles: Mapping[str, Mapping[str, Any]],
            traits: Sequence[str]) -> Iterable[dict[str, Any]]:
    """One record per member: the four columns, then `traits.<name>` for each trait asked for."""
    for member in members:
        profile = profiles.get(member.user_id)
        yield {"userId": member.user_id, "enteredAt": format_timestamp(member.entered_at),
               "segmentVersion": member.segment_version, "source": member.source,
               **{f"traits.{name}": trait_at(profile, name) for name in traits}}


def csv_cell(value: Any) -> str:
    """A CSV cell: text as it is, but neutralised with a leading apostrophe when it starts like a
    formula (= + - @, tab or carriage return), so a spreadsheet shows it instead of running it;
    absent values empty; numbers, booleans, lists and objects as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value.startswith(FORMULA_START) else value
    return orjson.dumps(value).decode()


def encode_csv(rows: Iterable[Sequence[Any]]) -> bytes:
    """Rows as RFC 4180 CSV (quoted where a cell needs it, CRLF line ends)."""
    buffer = io.StringIO()
    csv.writer(buffer).writerows([csv_cell(cell) for cell in row] for row in rows)
    return buffer.getvalue().encode()


def encode_page(fmt: ExportFormat, page: Iterable[dict[str, Any]]) -> bytes:
    if fmt is ExportFormat.CSV:
        return encode_csv(list(row.values()) for row in page)
    return b"".join(orjson.dumps(row) + b"\n" for row in page)


async def member_pages(store: ProfileStore, segment_id: str, fmt: ExportFormat,
                       traits: Sequence[str]) -> AsyncIterator[bytes]:
    """The export's body, page by page (the CSV header first).

    Once the first bytes are sent the status code cannot change: if a page cannot be read the
    failure is logged and re-raised, which ends the response without its final chunk, so a client
    sees an incomplete body (an error), never a short one that looks whole.
    """
    if fmt is ExportFormat.CSV:
        yield encode_csv([[*COLUMNS, *(f"traits.{name}" for name in traits)]])
    after: str | None = None
    sent = 0
    while True:
        try:
            members = await store.segment_members(segment_id, after, EXPORT_PAGE)
            profiles = await store.get_profiles([m.user_id for m in members]) if traits and members else {}
        except Exception as exc:  # whatever the store raised: the status is sent, aborting is all that is left
            log.warning("export of segment %s broke off after %d members: %s", segment_id, sent, exc)
            raise
        if members:
            yield encode_page(fmt, records(members, profiles, traits))
            sent += len(members)
        if len(members) < EXPORT_PAGE:
            return
        after = members[-1].user_id


@export.get(
    "/{segment_id}/members/export", response_class=StreamingResponse, summary="Every member, as CSV or JSON lines",
    responses={200: {"content": {MEDIA_TYPES[ExportFormat.CSV]: {}, MEDIA_TYPES[ExportFormat.JSONL]: {}},
                     "description": "Streamed in user-id order; X-Total-Count is the size when it started"},
               404: {"description": "No such segment"},
               422: {"description": "A bad `format` or `traits`"}},
)
async def export_members(
    segment_id: str, repo: Repository, store: Store,
    format: Annotated[ExportFormat, Query(description="csv (with a header row) or jsonl")] = ExportFormat.CSV,
    traits: Annotated[str | None, Query(description=f"Comma-separated trait paths (up to {MAX_TRAITS}), each a"
                                                    " column `traits.<name>`", max_length=8000)] = None,
) -> StreamingResponse:
    """Columns userId, enteredAt, segmentVersion, source, then `traits.<name>` from each member's stored
    profile (empty or null when absent). In CSV, text cells that start with = + - @ (or a tab or
    carriage return) get a leading apostrophe so spreadsheets do not run them as formulas, and nested
    trait values are JSON. Members who enter or leave during the export may or may not be in it."""
    names = trait_names(traits)
    row = await repo.get(segment_id)
    total = await store.segment_size(segment_id)
    filename = f"{slug(row.name)}-members.{format.value}"
    return StreamingResponse(member_pages(store, segment_id, format, names), media_type=MEDIA_TYPES[format],
                             headers={"Content-Disposition": f'attachment; filename="{filename}"',
                                      "X-Total-Count": str(total)})
