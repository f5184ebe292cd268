"""The profile store in PostgreSQL (tables of migration 0001, reasons of 0005), for the local target."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg.types.json import Jsonb

from server.domain.membership import MembershipChange
from server.domain.pipeline import Removal
from server.domain.profile import Profile
from server.stores.postgres import Database
from server.stores.profile_store import (
    HOUR,
    AliasLink,
    ChangeCounts,
    HourPoint,
    Membership,
    Overlap,
    TraitBreakdown,
    TraitCount,
    hour_points,
    newest_per_user,
)

_MEMBER_COLUMNS = "segment_id::text, user_id, segment_version, entered_at, source"
# a user's reads carry the reasons; a segment's pages (exports, campaign audiences) do not read them
_USER_MEMBER_COLUMNS = f"{_MEMBER_COLUMNS}, because"

# One change, entered or exited, recorded in the history only when it changed the membership (so a
# replayed change adds nothing), each with its reason. Needs no answer before the next statement: changes
# can be pipelined.
_APPLY_CHANGE = (
    "WITH entered AS ("
    " INSERT INTO segment_memberships (segment_id, user_id, segment_version, entered_at, source, because)"
    " SELECT %(segment)s::uuid, %(user)s::text, %(version)s::integer, %(at)s::timestamptz, %(source)s::text,"
    " %(because)s::jsonb"
    " WHERE %(change)s::text = 'entered' ON CONFLICT DO NOTHING RETURNING 1),"
    " exited AS ("
    " DELETE FROM segment_memberships WHERE %(change)s::text = 'exited'"
    " AND segment_id = %(segment)s::uuid AND user_id = %(user)s::text RETURNING 1)"
    " INSERT INTO membership_changes (segment_id, user_id, change, segment_version, at, because)"
    " SELECT %(segment)s::uuid, %(user)s::text, %(change)s::text, %(version)s::integer, %(at)s::timestamptz,"
    " %(because)s::jsonb"
    " WHERE EXISTS (SELECT 1 FROM entered) OR EXISTS (SELECT 1 FROM exited) RETURNING 1"
)


# How many users are in exactly each combination of the segments asked for: per user a bitmask of its
# segments (bit i = the i-th id), then users per mask; at most 2^10 rows, however large the segments are.
_OVERLAP = (
    "WITH wanted AS (SELECT id, (ord - 1)::integer AS bit FROM unnest(%(ids)s::uuid[]) WITH ORDINALITY AS w(id, ord)),"
    " masks AS (SELECT bit_or(1 << w.bit) AS mask FROM segment_memberships m JOIN wanted w ON w.id = m.segment_id"
    " GROUP BY m.user_id)"
    " SELECT mask, count(*) FROM masks GROUP BY mask"
)

# The segment's size now and its ledger per hour from the first hour on (hour NULL: everything after the
# last hour), read in one statement so both come from the same snapshot.
_HISTORY = (
    "WITH size AS (SELECT count(*) AS n FROM segment_memberships WHERE segment_id = %(segment)s),"
    " buckets AS (SELECT CASE WHEN at < %(end)s THEN date_bin('1 hour', at, TIMESTAMPTZ '2000-01-01 00:00Z') END"
    " AS hour, count(*) FILTER (WHERE change = 'entered') AS entered,"
    " count(*) FILTER (WHERE change = 'exited') AS exited"
    " FROM membership_changes WHERE segment_id = %(segment)s AND at >= %(first)s GROUP BY 1)"
    " SELECT size.n, buckets.hour, buckets.entered, buckets.exited FROM size LEFT JOIN buckets ON true"
)

# Members counted by one trait's value. A strict jsonpath (a parameter) reads only through objects, as
# `trait_at` does; `silent` turns a missing key or a non-object on the way into NULL. JSON null counts
# as missing, as for the rule language's `exists`. Ties go in the byte order of the values' JSON text.
_BREAKDOWN = (
    "WITH v AS (SELECT jsonb_path_query_first(p.profile, %(path)s::jsonpath, '{}', true) AS value"
    " FROM segment_memberships m LEFT JOIN user_profiles p ON p.user_id = m.user_id"
    " WHERE m.segment_id = %(segment)s),"
    " counted AS (SELECT value, count(*) AS n FROM v WHERE value IS NOT NULL AND value <> 'null'::jsonb"
    " GROUP BY value),"
    " ranked AS (SELECT value, n, row_number() OVER (ORDER BY n DESC, value::text COLLATE \"C\") AS rank"
    " FROM counted)"
    " SELECT (SELECT count(*) FROM v),"
    " (SELECT count(*) FROM v WHERE value IS NULL OR value = 'null'::jsonb),"
    " (SELECT COALESCE(jsonb_agg(jsonb_build_array(value, n) ORDER BY rank), '[]'::jsonb) FROM ranked"
    "  WHERE rank <= %(limit)s),"
    " (SELECT COALESCE(sum(n), 0) FROM ranked WHERE rank > %(limit)s)"
)


def trait_path(trait: str) -> str:
    """The strict jsonpath of a dotted trait path inside `traits` (each part quoted as a key)."""
    return "strict $.\"traits\"" + "".join(f".{json.dumps(part)}" for part in trait.split("."))


# the user an id belongs to: the user it is linked to, if it is an anonymous id, else itself
_CANONICAL = "c AS (SELECT COALESCE((SELECT user_id FROM user_aliases WHERE anonymous_id = %(id)s), %(id)s) AS id)"


def _membership(row: tuple[Any, ...]) -> Membership:
    return Membership(segment_id=row[0], user_id=row[1], segment_version=row[2], entered_at=row[3], source=row[4],
                      because=_as_written(row[5]) if len(row) > 5 else None)


_LEAF_ORDER = {"path": 0, "value": 1, "result": 2, "was": 3}


def _as_written(because: dict[str, Any] | None) -> dict[str, Any] | None:
    """A reason in the rule engine's key order (cause first, its leaves last, each leaf path first): jsonb
    stores keys sorted by length, which reads badly where people read it (explain, amctl)."""
    if because is None:
        return None
    ordered = {k: because[k] for k in ("cause",) if k in because}
    ordered.update((k, v) for k, v in because.items() if k not in ("cause", "leaves"))
    if "leaves" in because:
        ordered["leaves"] = [dict(sorted(leaf.items(), key=lambda item: _LEAF_ORDER.get(item[0], 4)))
                             if isinstance(leaf, dict) else leaf for leaf in because["leaves"]]
    return ordered


def _because(change: MembershipChange) -> Jsonb | None:
    return Jsonb(dict(change.because)) if change.because is not None else None


class PostgresProfileStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT profile FROM user_profiles WHERE user_id = %s", (user_id,))
            row = await cur.fetchone()
        return dict(row[0]) if row else None

    async def get_profiles(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not user_ids:
            return {}
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT user_id, profile FROM user_profiles WHERE user_id = ANY(%s)",
                                     (list(user_ids),))
            return {row[0]: dict(row[1]) for row in await cur.fetchall()}

    async def put_profiles(self, profiles: Sequence[Profile]) -> None:
        latest = newest_per_user(profiles)  # one row per user: ON CONFLICT cannot hit a row twice
        if not latest:
            return
        async with self.db.connection() as conn, conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO user_profiles (user_id, profile, updated_at) VALUES (%s, %s, now())"
                " ON CONFLICT (user_id) DO UPDATE SET profile = EXCLUDED.profile, updated_at = now()"
                " WHERE COALESCE((user_profiles.profile->>'eventCount')::bigint, 0)"
                " <= COALESCE((EXCLUDED.profile->>'eventCount')::bigint, 0)",
                [(user_id, Jsonb(profile.to_json())) for user_id, profile in latest.items()],
            )

    async def scan_profiles(self, after: str | None, limit: int,
                            updated_since: datetime | None = None) -> list[dict[str, Any]]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT profile FROM user_profiles WHERE user_id > %s"
                " AND (%s::timestamptz IS NULL OR updated_at >= %s) ORDER BY user_id LIMIT %s",
                (after or "", updated_since, updated_since, limit),
            )
            return [dict(row[0]) for row in await cur.fetchall()]

    async def user_memberships(self, user_id: str) -> list[Membership]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_USER_MEMBER_COLUMNS} FROM segment_memberships WHERE user_id = %s ORDER BY entered_at",
                (user_id,),
            )
            return [_membership(row) for row in await cur.fetchall()]

    async def apply_changes(self, changes: Sequence[MembershipChange], source: str = "rule") -> int:
        """Apply changes in order, in one transaction and one pipelined round trip; returns how many were real."""
        if not changes:
            return 0
        applied = 0
        async with self.db.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(_APPLY_CHANGE, [
                {"segment": c.segment_id, "user": c.user_id, "change": c.change, "version": c.segment_version,
                 "at": c.at, "source": source, "because": _because(c)} for c in changes
            ], returning=True)
            while True:
                applied += len(await cur.fetchall())
                if not cur.nextset():
                    break
        return applied

    async def segment_members(self, segment_id: str, after: str | None, limit: int) -> list[Membership]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_MEMBER_COLUMNS} FROM segment_memberships WHERE segment_id = %s AND user_id > %s"
                " ORDER BY user_id LIMIT %s",
                (segment_id, after or "", limit),
            )
            return [_membership(row) for row in await cur.fetchall()]

    async def members_among(self, segment_id: str, user_ids: Sequence[str]) -> set[str]:
        if not user_ids:
            return set()
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT user_id FROM segment_memberships WHERE segment_id = %s AND user_id = ANY(%s)",
                (segment_id, list(user_ids)),
            )
            return {row[0] for row in await cur.fetchall()}

    async def segment_size(self, segment_id: str) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM segment_memberships WHERE segment_id = %s", (segment_id,))
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def change_counts(self, segment_id: str, since: datetime) -> ChangeCounts:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FILTER (WHERE change = 'entered'), count(*) FILTER (WHERE change = 'exited')"
                " FROM membership_changes WHERE segment_id = %s AND at >= %s",
                (segment_id, since.astimezone(UTC)),
            )
            row = await cur.fetchone()
        return ChangeCounts(entered=int(row[0]), exited=int(row[1])) if row else ChangeCounts(0, 0)

    async def overlap(self, segment_ids: Sequence[str]) -> Overlap:
        """One query over `segment_memberships`: users grouped by the combination of the segments they are in."""
        async with self.db.connection() as conn:
            cur = await conn.execute(_OVERLAP, {"ids": list(segment_ids)})
            masks = {int(mask): int(n) for mask, n in await cur.fetchall()}
        return Overlap.from_combinations(segment_ids, masks)

    async def hourly_history(self, segment_id: str, first_hour: datetime, hours: int) -> list[HourPoint]:
        """One query over `membership_changes` (its (segment_id, at) index) and the segment's size."""
        end = first_hour + hours * HOUR
        async with self.db.connection() as conn:
            cur = await conn.execute(_HISTORY, {"segment": segment_id, "first": first_hour, "end": end})
            rows = await cur.fetchall()
        size, changes, later = int(rows[0][0]), {}, ChangeCounts(0, 0)
        for _, hour, entered, exited in rows:
            if entered is None:  # LEFT JOIN: no change at all since the first hour
                continue
            if hour is None:
                later = ChangeCounts(int(entered), int(exited))
            else:
                changes[hour.astimezone(UTC)] = ChangeCounts(int(entered), int(exited))
        return hour_points(first_hour, hours, changes, later, size)

    async def trait_breakdown(self, segment_id: str, trait: str, limit: int) -> TraitBreakdown:
        """One query joining the members to their profiles; the counting happens in PostgreSQL."""
        async with self.db.connection() as conn:
            cur = await conn.execute(_BREAKDOWN, {"segment": segment_id, "path": trait_path(trait), "limit": limit})
            row = await cur.fetchone()
        assert row is not None  # scalar subqueries: always one row
        members, missing, top, other = row
        return TraitBreakdown(int(members), tuple(TraitCount(value, int(n)) for value, n in top), int(other),
                              int(missing))

    async def remove_segment(self, segment_id: str) -> int:
        async with self.db.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "DELETE FROM segment_memberships WHERE segment_id = %s RETURNING user_id, segment_version",
                (segment_id,),
            )
            rows = await cur.fetchall()
            now = datetime.now(UTC)
            async with conn.cursor() as inserts:
                await inserts.executemany(
                    "INSERT INTO membership_changes (segment_id, user_id, change, segment_version, at)"
                    " VALUES (%s, %s, 'exited', %s, %s)",
                    [(segment_id, user_id, version, now) for user_id, version in rows],
                )
        return len(rows)

    async def link_alias(self, anonymous_id: str, user_id: str, limit: int) -> AliasLink:
        async with self.db.connection() as conn, conn.transaction():
            # one link at a time per user, so two concurrent identifies cannot both take the last place
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", (user_id,))
            cur = await conn.execute(
                "SELECT (SELECT user_id FROM user_aliases WHERE anonymous_id = %(anon)s),"
                " (SELECT user_id FROM user_aliases WHERE anonymous_id = %(user)s),"
                " EXISTS (SELECT 1 FROM user_aliases WHERE user_id = %(anon)s)"
                "  OR EXISTS (SELECT 1 FROM user_profiles WHERE user_id = %(anon)s"
                "             AND NOT COALESCE((profile->>'anonymous')::boolean, false)),"
                " (SELECT count(*) FROM user_aliases WHERE user_id = %(user)s)",
                {"anon": anonymous_id, "user": user_id},
            )
            row = await cur.fetchone()
            assert row is not None
            owner, user_owner, anonymous_is_known, count = row
            if owner == user_id:
                return AliasLink("already")
            if owner is not None:
                return AliasLink("conflict", owner)
            if user_owner is not None:
                return AliasLink("alias_user", user_owner)
            if anonymous_is_known:
                return AliasLink("known_user")
            if count >= limit:
                return AliasLink("limit")
            cur = await conn.execute(
                "INSERT INTO user_aliases (anonymous_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING"
                " RETURNING 1", (anonymous_id, user_id))
            if await cur.fetchone() is None:  # linked by a concurrent call for another user
                cur = await conn.execute("SELECT user_id FROM user_aliases WHERE anonymous_id = %s", (anonymous_id,))
                taken = await cur.fetchone()
                owner = taken[0] if taken else None
                return AliasLink("already") if owner == user_id else AliasLink("conflict", owner)
            return AliasLink("linked")

    async def canonical_ids(self, ids: Sequence[str]) -> dict[str, str]:
        if not ids:
            return {}
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT anonymous_id, user_id FROM user_aliases WHERE anonymous_id = ANY(%s)",
                                     (list(ids),))
            return {row[0]: row[1] for row in await cur.fetchall()}

    async def resolve_profile(self, user_id: str) -> tuple[str, dict[str, Any] | None]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"WITH {_CANONICAL} SELECT c.id, p.profile FROM c LEFT JOIN user_profiles p ON p.user_id = c.id",
                {"id": user_id})
            row = await cur.fetchone()
        assert row is not None  # the CTE always has its one row
        return row[0], dict(row[1]) if row[1] is not None else None

    async def resolve_memberships(self, user_id: str) -> tuple[str, list[Membership]]:
        async with self.db.connection() as conn:
            cur = await conn.execute(
                f"WITH {_CANONICAL} SELECT c.id, m.segment_id::text, m.user_id, m.segment_version, m.entered_at,"
                " m.source, m.because FROM c LEFT JOIN segment_memberships m ON m.user_id = c.id ORDER BY m.entered_at",
                {"id": user_id})
            rows = await cur.fetchall()
        return rows[0][0], [_membership(row[1:]) for row in rows if row[1] is not None]

    async def aliases_of(self, user_id: str) -> list[str]:
        async with self.db.connection() as conn:
            cur = await conn.execute("SELECT anonymous_id FROM user_aliases WHERE user_id = %s"
                                     " ORDER BY linked_at, anonymous_id", (user_id,))
            return [row[0] for row in await cur.fetchall()]

    async def remove_user(self, user_id: str, reason: Removal) -> None:
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute("DELETE FROM user_profiles WHERE user_id = %s", (user_id,))
            await conn.execute("DELETE FROM segment_memberships WHERE user_id = %s", (user_id,))
            if reason == "deleted":
                await conn.execute("DELETE FROM user_aliases WHERE user_id = %s OR anonymous_id = %s",
                                   (user_id, user_id))
                await conn.execute("DELETE FROM membership_changes WHERE user_id = %s", (user_id,))
