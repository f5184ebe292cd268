"""Segments in PostgreSQL; every change writes its outbox row in the same transaction.

A write whose rule refers to other segments, and every delete, first takes the advisory lock
`REFERENCE_LOCK` in its transaction and checks the reference graph it then reads, so concurrent
writes cannot close a cycle between them or leave a reference to a deleted segment.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from server.domain.rules import Rule, references
from server.domain.segment import SegmentDefinition, SegmentStatus, SegmentType
from server.runtime.errors import Conflict, NotFound, PreconditionFailed
from server.segment_api.references import REFERENCE_LOCK, ReferenceGraph, SegmentNode, invalid_rules, stored_references
from server.stores.outbox import enqueue
from server.stores.postgres import Database

_UPDATABLE = frozenset({"name", "description", "status", "rules"})
_COLUMNS = "id::text AS id, name, description, type, status, rules, version, created_at, updated_at"
_LIST_FILTER = ("deleted_at IS NULL AND (%(type)s::text IS NULL OR type = %(type)s)"
                " AND (%(status)s::text IS NULL OR status = %(status)s)")
# {sets} is composed from quoted identifiers and placeholders only (psycopg.sql)
_UPDATE = ("UPDATE segments SET {sets} WHERE id = %(id)s AND deleted_at IS NULL"
           " AND (%(expected)s::int IS NULL OR version = %(expected)s)"
           f" RETURNING {_COLUMNS}")
# every live segment; the rules only of those that refer to a segment (the others need no parsing)
_GRAPH = ("SELECT id::text, name, CASE WHEN rules @? '$.**.segment' THEN rules END AS rules FROM segments"
          " WHERE deleted_at IS NULL")


@dataclass(frozen=True)
class SegmentRow:
    id: str
    name: str
    description: str
    type: str
    status: str
    rules: dict[str, Any] | None
    version: int
    created_at: datetime
    updated_at: datetime

    def definition(self) -> SegmentDefinition:
        """The record published on `segment-rules`."""
        return SegmentDefinition(id=self.id, version=self.version, name=self.name, type=SegmentType(self.type),
                                 status=SegmentStatus(self.status), rules=self.rules, updated_at=self.updated_at)


def _duplicate(name: str) -> Conflict:
    return Conflict(f"a segment named '{name}' already exists")


class SegmentRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, name: str, description: str, type_: str, status: str,
                     rules: dict[str, Any] | None, rule: Rule | None = None) -> SegmentRow:
        """Insert a segment; `rule` is `rules` parsed, whose references are checked (422) under the lock."""
        try:
            async with self.db.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                if rule is not None and references(rule):
                    await _check_references(cur, rule, None, name)
                await cur.execute(
                    f"INSERT INTO segments (id, name, description, type, status, rules) VALUES (%s, %s, %s, %s, %s, %s)"
                    f" RETURNING {_COLUMNS}",
                    (uuid.uuid4(), name, description, type_, status, Jsonb(rules) if rules is not None else None),
                )
                row = SegmentRow(**await _one(cur))
                await enqueue(cur, row.definition())
        except psycopg.errors.UniqueViolation:
            raise _duplicate(name) from None
        return row

    async def get(self, segment_id: str) -> SegmentRow:
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {_COLUMNS} FROM segments WHERE id = %s AND deleted_at IS NULL",
                              (_uuid(segment_id),))
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"no segment with id '{segment_id}'")
        return SegmentRow(**row)

    async def names(self, segment_ids: list[str]) -> dict[str, str]:
        if not segment_ids:
            return {}
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT id::text, name FROM segments WHERE id = ANY(%s)",
                                     ([_uuid(s) for s in segment_ids],))
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def list(
        self, type_: str | None, status: str | None, limit: int, offset: int
    ) -> tuple[list[SegmentRow], int]:
        params = {"type": type_, "status": status, "limit": limit, "offset": offset}
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT count(*) AS n FROM segments WHERE {_LIST_FILTER}", params)
            total = int((await _one(cur))["n"])
            await cur.execute(
                f"SELECT {_COLUMNS} FROM segments WHERE {_LIST_FILTER}"
                " ORDER BY created_at, id LIMIT %(limit)s OFFSET %(offset)s",
                params,
            )
            rows = [SegmentRow(**r) for r in await cur.fetchall()]
        return rows, total

    async def update(self, segment_id: str, changes: dict[str, Any], expected_version: int | None,
                     precondition: bool, rule: Rule | None = None) -> SegmentRow:
        """Apply `changes` and bump the version; `expected_version` guards against lost updates. `rule` is
        `changes["rules"]` parsed, whose references are checked (422) under the lock."""
        unknown = set(changes) - _UPDATABLE
        if unknown:  # only these fixed columns may be named, and then only as quoted identifiers
            raise ValueError(f"not updatable: {sorted(unknown)}")
        sets = [sql.SQL("{} = {}").format(sql.Identifier(column), sql.Placeholder(column)) for column in changes]
        query = sql.SQL(_UPDATE).format(sets=sql.SQL(", ").join(
            [*sets, sql.SQL("version = version + 1"), sql.SQL("updated_at = now()")]))
        params = {**{k: Jsonb(v) if k == "rules" and v is not None else v for k, v in changes.items()},
                  "id": _uuid(segment_id), "expected": expected_version}
        try:
            async with self.db.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
                if rule is not None and references(rule):
                    await _check_references(cur, rule, segment_id, changes.get("name"))
                await cur.execute(query, params)
                found = await cur.fetchone()
                if found is None:
                    current = await self.get(segment_id)  # raises NotFound if it is gone
                    message = f"segment '{segment_id}' is at version {current.version}, not {expected_version}"
                    raise PreconditionFailed(message) if precondition else Conflict(message)
                row = SegmentRow(**found)
                await enqueue(cur, row.definition())
        except psycopg.errors.UniqueViolation:
            raise _duplicate(str(changes.get("name"))) from None
        return row

    async def snapshot(self) -> int:
        """Queue the current definition of every live segment for publishing.

        The local broker keeps topics in memory, so after its restart the rule engine needs every
        definition again; on a durable broker the repeat is harmless (same versions).
        """
        async with self.db.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {_COLUMNS} FROM segments WHERE deleted_at IS NULL ORDER BY created_at, id")
            rows = [SegmentRow(**r) for r in await cur.fetchall()]
            for row in rows:
                await enqueue(cur, row.definition())
        return len(rows)

    async def reference_graph(self) -> ReferenceGraph:
        """The live segments and their references, as committed now (no lock: for reads such as a preview)."""
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            return await _graph(cur)

    async def delete(self, segment_id: str, before_commit: Callable[[], Awaitable[None]] | None = None) -> None:
        """Mark the segment deleted and queue its tombstone; 409 while other live segments refer to it.

        `before_commit` runs once the delete is decided, inside its transaction: when it raises, nothing is deleted.
        """
        async with self.db.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (REFERENCE_LOCK,))
            graph = await _graph(cur)
            referrers = graph.referrers(str(_uuid(segment_id)))
            if referrers:
                named = ", ".join(f"'{name}' ({sid})" for sid, name in referrers)
                raise Conflict(f"segment '{graph.name(str(_uuid(segment_id)))}' is referred to by {named}: "
                               "remove those references first")
            await cur.execute(
                "UPDATE segments SET deleted_at = now() WHERE id = %s AND deleted_at IS NULL RETURNING id::text",
                (_uuid(segment_id),),
            )
            if await cur.fetchone() is None:
                raise NotFound(f"no segment with id '{segment_id}'")
            await enqueue(cur, SegmentDefinition.tombstone(segment_id))
            if before_commit is not None:
                await before_commit()


async def _graph(cur: psycopg.AsyncCursor[dict[str, Any]]) -> ReferenceGraph:
    await cur.execute(_GRAPH)
    return ReferenceGraph({row["id"]: SegmentNode(row["name"], stored_references(row["rules"]))
                           for row in await cur.fetchall()})


async def _check_references(cur: psycopg.AsyncCursor[dict[str, Any]], rule: Rule, segment_id: str | None,
                            name: str | None) -> None:
    """Take the reference lock for the rest of the transaction, then refuse (422) references the graph does not
    allow: to a segment that is not live, closing a cycle, or nesting too deep."""
    await cur.execute("SELECT pg_advisory_xact_lock(%s)", (REFERENCE_LOCK,))
    graph = await _graph(cur)
    sid = str(_uuid(segment_id)) if segment_id is not None else None
    issues = graph.problems(rule, sid, name or (graph.name(sid) if sid is not None else ""))
    if issues:
        raise invalid_rules(issues)


def _uuid(segment_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(segment_id)
    except ValueError:
        raise NotFound(f"no segment with id '{segment_id}'") from None


async def _one(cur: psycopg.AsyncCursor[dict[str, Any]]) -> dict[str, Any]:
    row = await cur.fetchone()
    assert row is not None  # RETURNING / count(*) always yield a row
    return row
