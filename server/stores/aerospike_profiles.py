"""The profile store in Aerospike (the Kubernetes target), with the seed's namespaces.

- `user_profiles`: set `profiles` (key user id, bins `json`, `user`), set `memberships` (key user
  id, bin `segs`: map segment id -> [version, entered ms, source, reason JSON if any]; bin `ledger`: the
  user's last LEDGER_KEPT changes, each [segment, change, version, ms, reason JSON if any], written in the
  same operation as `segs`) and set `members` (key `segment|user`, bins `segment`, `user`, `v`, `at`, `src`,
  `because` (the entry's reason, as JSON); a secondary index on `segment`), set
  `aliases` (key anonymous id, bins `user`, `at`: created only, so a link is never moved) and set
  `alias_lists` (key user id, bin `ids`: the user's anonymous ids in link order).
- `analytics`: set `changes`, one record per segment and minute counting entries and exits
  (TTL two days), for the stats endpoint; set `hourly`, the same per segment and hour (TTL 93 days),
  for a segment's history.
The client is synchronous, so every call runs in a worker thread.

Paging by user id (`scan_profiles`, `segment_members`) sorts what a scan or query returns: fine
for the demo's sizes; a large deployment would keep an ordered index per segment instead.
Aerospike has no joins: the insights (overlap, breakdown) read each segment's members through the
`members_by_segment` index and combine them in Python, and a breakdown reads the members' profiles in batches.
History reaches back as far as the hourly counters live (93 days; earlier hours read as no change). A user
erased or merged away leaves the memberships without an exit in the counters (they count, they do not
name anyone), so sizes before that user entered read one lower.
The alias limit is checked before the link is made, not in one operation with it: two identifies for
one user racing at the limit can both pass (PostgreSQL's adapter serialises them per user).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aerospike
from aerospike import exception as aerospike_errors
from aerospike import predicates
from aerospike_helpers.operations import list_operations, map_operations

from server.domain.membership import MembershipChange
from server.domain.pipeline import Removal
from server.domain.profile import Profile
from server.stores.profile_store import (
    HOUR,
    AliasLink,
    ChangeCounts,
    HourPoint,
    Membership,
    Overlap,
    TraitBreakdown,
    hour_points,
    newest_per_user,
    trait_at,
)

PROFILES_NS, ANALYTICS_NS = "user_profiles", "analytics"
CHANGES_TTL_S = 2 * 24 * 3600
HOURLY_TTL_S = 93 * 24 * 3600  # three of the longest history range (31 days)
PROFILE_BATCH = 1000  # profiles per batch read for a breakdown
# changes kept per user in the `ledger` bin: the record stays far below Aerospike's write block (a reason is
# at most 20 leaves, a few KB)
LEDGER_KEPT = 100


def connect(hosts: str) -> Any:
    """`host:port,host:port` → a connected client."""
    pairs = []
    for host in hosts.split(","):
        name, _, port = host.strip().partition(":")
        pairs.append((name, int(port or 3000)))
    return aerospike.client({"hosts": pairs}).connect()


def _at(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)


def _reason(change: MembershipChange) -> list[str]:
    """The change's reason as the one-element tail of a stored list (none when it has none)."""
    return [json.dumps(dict(change.because))] if change.because is not None else []


def _because(stored: Any) -> dict[str, Any] | None:
    return dict(json.loads(stored)) if stored else None


def _ledger(change: MembershipChange, at_ms: int) -> list[Any]:
    """Append the change to the user's ledger and keep its last LEDGER_KEPT entries (in one `operate`)."""
    entry = [change.segment_id, change.change, change.segment_version, at_ms, *_reason(change)]
    return [list_operations.list_append("ledger", entry),
            list_operations.list_remove_by_index_range("ledger", -LEDGER_KEPT, aerospike.LIST_RETURN_NONE,
                                                       inverted=True)]


class AerospikeProfileStore:
    def __init__(self, client: Any) -> None:
        self.client = client
        with contextlib.suppress(aerospike_errors.IndexFoundError):
            self.client.index_string_create(PROFILES_NS, "members", "segment", "members_by_segment")

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._get_profile, user_id)

    def _get_profile(self, user_id: str) -> dict[str, Any] | None:
        try:
            _, _, bins = self.client.get((PROFILES_NS, "profiles", user_id))
        except aerospike_errors.RecordNotFound:
            return None
        return dict(json.loads(bins["json"]))

    async def get_profiles(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(self._get_profiles, list(user_ids))

    def _get_profiles(self, user_ids: list[str]) -> dict[str, dict[str, Any]]:
        if not user_ids:
            return {}
        batch = self.client.batch_read([(PROFILES_NS, "profiles", u) for u in user_ids], ["json"])
        found: dict[str, dict[str, Any]] = {}
        for user, entry in zip(user_ids, batch.batch_records, strict=True):
            if entry.result == 0 and entry.record is not None:  # otherwise not found
                found[user] = dict(json.loads(entry.record[2]["json"]))
        return found

    async def put_profiles(self, profiles: Sequence[Profile]) -> None:
        await asyncio.to_thread(self._put_profiles, newest_per_user(profiles))

    def _put_profiles(self, latest: dict[str, Profile]) -> None:
        for user_id, profile in latest.items():
            key = (PROFILES_NS, "profiles", user_id)
            try:  # the rule engine's writer is the only writer, so read-compare-write does not race
                _, _, stored = self.client.select(key, ["events"])
                if int(stored.get("events") or 0) > profile.event_count:
                    continue
            except aerospike_errors.RecordNotFound:
                pass
            self.client.put(key, {"json": json.dumps(profile.to_json()), "user": user_id, "events": profile.event_count,
                                  "updated": int(time.time() * 1000)})

    async def scan_profiles(self, after: str | None, limit: int,
                            updated_since: datetime | None = None) -> list[dict[str, Any]]:
        since_ms = int(updated_since.timestamp() * 1000) if updated_since else 0
        return await asyncio.to_thread(self._scan_profiles, after or "", limit, since_ms)

    def _scan_profiles(self, after: str, limit: int, since_ms: int) -> list[dict[str, Any]]:
        records = self.client.query(PROFILES_NS, "profiles").results()
        rows = [json.loads(bins["json"]) for _, _, bins in records
                if bins.get("user", "") > after and bins.get("updated", 0) >= since_ms]
        return sorted(rows, key=lambda p: str(p["userId"]))[:limit]

    async def user_memberships(self, user_id: str) -> list[Membership]:
        return await asyncio.to_thread(self._user_memberships, user_id)

    def _user_memberships(self, user_id: str) -> list[Membership]:
        try:
            _, _, bins = self.client.get((PROFILES_NS, "memberships", user_id))
        except aerospike_errors.RecordNotFound:
            return []
        rows = [Membership(sid, user_id, v, _at(at), src, _because(why[0] if why else None))
                for sid, (v, at, src, *why) in bins.get("segs", {}).items()]
        return sorted(rows, key=lambda m: m.entered_at)

    async def apply_changes(self, changes: Sequence[MembershipChange], source: str = "rule") -> int:
        return await asyncio.to_thread(self._apply_changes, changes, source)

    def _apply_changes(self, changes: Sequence[MembershipChange], source: str) -> int:
        applied = 0
        for change in changes:
            member_key = (PROFILES_NS, "members", f"{change.segment_id}|{change.user_id}")
            user_key = (PROFILES_NS, "memberships", change.user_id)
            at_ms = int(change.at.timestamp() * 1000)
            if change.change == "entered":
                member = {"segment": change.segment_id, "user": change.user_id, "v": change.segment_version,
                          "at": at_ms, "src": source}
                if change.because is not None:
                    member["because"] = _reason(change)[0]
                try:  # create-only: a repeated 'entered' changes nothing
                    self.client.put(member_key, member, policy={"exists": aerospike.POLICY_EXISTS_CREATE})
                except aerospike_errors.RecordExistsError:
                    continue
                entry = [change.segment_version, at_ms, source, *_reason(change)]
                self.client.operate(user_key, [map_operations.map_put("segs", change.segment_id, entry),
                                               *_ledger(change, at_ms)])
            else:
                try:
                    self.client.remove(member_key)
                except aerospike_errors.RecordNotFound:
                    continue
                self.client.operate(user_key, [
                    map_operations.map_remove_by_key("segs", change.segment_id, aerospike.MAP_RETURN_NONE),
                    *_ledger(change, at_ms)])
            self._count(change)
            applied += 1
        return applied

    def _count(self, change: MembershipChange) -> None:
        minute = int(change.at.timestamp() // 60)
        key = (ANALYTICS_NS, "changes", f"{change.segment_id}|{minute}")
        self.client.increment(key, change.change, 1, meta={"ttl": CHANGES_TTL_S})
        hour = int(change.at.timestamp() // 3600)
        self.client.increment((ANALYTICS_NS, "hourly", f"{change.segment_id}|{hour}"), change.change, 1,
                              meta={"ttl": HOURLY_TTL_S})

    async def segment_members(self, segment_id: str, after: str | None, limit: int) -> list[Membership]:
        return await asyncio.to_thread(self._segment_members, segment_id, after or "", limit)

    def _members(self, segment_id: str) -> list[Membership]:
        query = self.client.query(PROFILES_NS, "members")
        query.select("user", "v", "at", "src")  # not `because`: a segment's pages leave the reasons out
        query.where(predicates.equals("segment", segment_id))
        return [Membership(segment_id, b["user"], b["v"], _at(b["at"]), b["src"]) for _, _, b in query.results()]

    def _segment_members(self, segment_id: str, after: str, limit: int) -> list[Membership]:
        rows = [m for m in self._members(segment_id) if m.user_id > after]
        return sorted(rows, key=lambda m: m.user_id)[:limit]

    async def members_among(self, segment_id: str, user_ids: Sequence[str]) -> set[str]:
        return await asyncio.to_thread(self._members_among, segment_id, list(user_ids))

    def _members_among(self, segment_id: str, user_ids: list[str]) -> set[str]:
        if not user_ids:
            return set()
        keys = [(PROFILES_NS, "members", f"{segment_id}|{u}") for u in user_ids]
        batch = self.client.batch_read(keys, ["user"])
        return {user for user, entry in zip(user_ids, batch.batch_records, strict=True)
                if entry.result == 0 and entry.record is not None}

    async def segment_size(self, segment_id: str) -> int:
        return len(await asyncio.to_thread(self._members, segment_id))

    async def change_counts(self, segment_id: str, since: datetime) -> ChangeCounts:
        return await asyncio.to_thread(self._change_counts, segment_id, since)

    def _change_counts(self, segment_id: str, since: datetime) -> ChangeCounts:
        first, last = int(since.timestamp() // 60), int(datetime.now(UTC).timestamp() // 60)
        keys = [(ANALYTICS_NS, "changes", f"{segment_id}|{minute}") for minute in range(first, last + 1)]
        entered = exited = 0
        for _, _, bins in self.client.get_many(keys):
            if bins:
                entered += int(bins.get("entered", 0))
                exited += int(bins.get("exited", 0))
        return ChangeCounts(entered, exited)

    async def overlap(self, segment_ids: Sequence[str]) -> Overlap:
        """No joins in Aerospike: each segment's members are read through the `members_by_segment` index
        (one query per segment) and combined here, per user a bitmask of its segments."""
        return await asyncio.to_thread(self._overlap, list(segment_ids))

    def _overlap(self, segment_ids: list[str]) -> Overlap:
        masks: dict[str, int] = {}
        for bit, segment_id in enumerate(segment_ids):
            for member in self._members(segment_id):
                masks[member.user_id] = masks.get(member.user_id, 0) | 1 << bit
        users_per_mask: dict[int, int] = {}
        for mask in masks.values():
            users_per_mask[mask] = users_per_mask.get(mask, 0) + 1
        return Overlap.from_combinations(segment_ids, users_per_mask)

    async def hourly_history(self, segment_id: str, first_hour: datetime, hours: int) -> list[HourPoint]:
        """The `hourly` counters of every hour from `first_hour` to now (one batch read) and the size."""
        return await asyncio.to_thread(self._hourly_history, segment_id, first_hour, hours)

    def _hourly_history(self, segment_id: str, first_hour: datetime, hours: int) -> list[HourPoint]:
        end = first_hour + hours * HOUR
        oldest = int(max(first_hour.timestamp(), time.time() - HOURLY_TTL_S) // 3600)  # older ones have expired
        newest = int(max(end.timestamp(), time.time()) // 3600)
        numbers = list(range(oldest, newest + 1))
        records = self.client.get_many([(ANALYTICS_NS, "hourly", f"{segment_id}|{n}") for n in numbers]) \
            if numbers else []
        changes: dict[datetime, ChangeCounts] = {}
        later_entered = later_exited = 0
        for number, (_, _, bins) in zip(numbers, records, strict=True):
            if not bins:
                continue
            entered, exited = int(bins.get("entered", 0)), int(bins.get("exited", 0))
            start = datetime.fromtimestamp(number * 3600, UTC)
            if start >= end:
                later_entered, later_exited = later_entered + entered, later_exited + exited
            else:
                changes[start] = ChangeCounts(entered, exited)
        return hour_points(first_hour, hours, changes, ChangeCounts(later_entered, later_exited),
                           len(self._members(segment_id)))

    async def trait_breakdown(self, segment_id: str, trait: str, limit: int) -> TraitBreakdown:
        """The members through the index, their profiles read `PROFILE_BATCH` at a time, counted here."""
        return await asyncio.to_thread(self._trait_breakdown, segment_id, trait, limit)

    def _trait_breakdown(self, segment_id: str, trait: str, limit: int) -> TraitBreakdown:
        users = [m.user_id for m in self._members(segment_id)]
        values: list[Any] = []
        for start in range(0, len(users), PROFILE_BATCH):
            batch = users[start:start + PROFILE_BATCH]
            profiles = self._get_profiles(batch)
            values.extend(trait_at(profiles.get(user), trait) for user in batch)
        return TraitBreakdown.tally(values, limit)

    async def remove_segment(self, segment_id: str) -> int:
        now = datetime.now(UTC)
        members = await asyncio.to_thread(self._members, segment_id)
        changes = [MembershipChange(m.user_id, segment_id, "exited", now, m.segment_version) for m in members]
        return await self.apply_changes(changes)

    async def link_alias(self, anonymous_id: str, user_id: str, limit: int) -> AliasLink:
        return await asyncio.to_thread(self._link_alias, anonymous_id, user_id, limit)

    def _bins(self, set_name: str, key: str) -> dict[str, Any] | None:
        try:
            _, _, bins = self.client.get((PROFILES_NS, set_name, key))
        except aerospike_errors.RecordNotFound:
            return None
        return dict(bins)

    def _link_alias(self, anonymous_id: str, user_id: str, limit: int) -> AliasLink:
        owner = (self._bins("aliases", anonymous_id) or {}).get("user")
        if owner is not None:
            return AliasLink("already") if owner == user_id else AliasLink("conflict", owner)
        user_owner = (self._bins("aliases", user_id) or {}).get("user")
        if user_owner is not None:
            return AliasLink("alias_user", user_owner)
        profile = self._get_profile(anonymous_id)
        if (self._bins("alias_lists", anonymous_id) or {}).get("ids") or \
                (profile is not None and not profile.get("anonymous", False)):
            return AliasLink("known_user")
        if len((self._bins("alias_lists", user_id) or {}).get("ids") or []) >= limit:
            return AliasLink("limit")
        try:
            self.client.put((PROFILES_NS, "aliases", anonymous_id), {"user": user_id, "at": int(time.time() * 1000)},
                            policy={"exists": aerospike.POLICY_EXISTS_CREATE})
        except aerospike_errors.RecordExistsError:  # linked by a concurrent call
            taken = (self._bins("aliases", anonymous_id) or {}).get("user")
            return AliasLink("already") if taken == user_id else AliasLink("conflict", taken)
        self.client.operate((PROFILES_NS, "alias_lists", user_id), [list_operations.list_append("ids", anonymous_id)])
        return AliasLink("linked")

    async def canonical_ids(self, ids: Sequence[str]) -> dict[str, str]:
        return await asyncio.to_thread(self._canonical_ids, list(ids))

    def _canonical_ids(self, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        batch = self.client.batch_read([(PROFILES_NS, "aliases", i) for i in ids], ["user"])
        return {i: entry.record[2]["user"] for i, entry in zip(ids, batch.batch_records, strict=True)
                if entry.result == 0 and entry.record is not None}

    def _canonical(self, user_id: str) -> str:
        return str((self._bins("aliases", user_id) or {}).get("user") or user_id)

    async def resolve_profile(self, user_id: str) -> tuple[str, dict[str, Any] | None]:
        def read() -> tuple[str, dict[str, Any] | None]:
            canonical = self._canonical(user_id)
            return canonical, self._get_profile(canonical)
        return await asyncio.to_thread(read)

    async def resolve_memberships(self, user_id: str) -> tuple[str, list[Membership]]:
        def read() -> tuple[str, list[Membership]]:
            canonical = self._canonical(user_id)
            return canonical, self._user_memberships(canonical)
        return await asyncio.to_thread(read)

    async def aliases_of(self, user_id: str) -> list[str]:
        return await asyncio.to_thread(lambda: list((self._bins("alias_lists", user_id) or {}).get("ids") or []))

    async def remove_user(self, user_id: str, reason: Removal) -> None:
        await asyncio.to_thread(self._remove_user, user_id, reason)

    def _remove(self, set_name: str, key: str) -> None:
        with contextlib.suppress(aerospike_errors.RecordNotFound):
            self.client.remove((PROFILES_NS, set_name, key))

    def _remove_user(self, user_id: str, reason: Removal) -> None:
        self._remove("profiles", user_id)
        memberships = self._bins("memberships", user_id)
        for segment_id in (memberships or {}).get("segs", {}):
            self._remove("members", f"{segment_id}|{user_id}")
        if reason != "deleted":
            if memberships is not None:  # a merged id keeps its ledger, as PostgreSQL keeps its history rows
                self.client.remove_bin((PROFILES_NS, "memberships", user_id), ["segs"])
            return
        self._remove("memberships", user_id)  # the ledger goes with it
        for alias in (self._bins("alias_lists", user_id) or {}).get("ids") or []:
            self._remove("aliases", alias)
        self._remove("alias_lists", user_id)
        owner = (self._bins("aliases", user_id) or {}).get("user")
        if owner is not None:  # the id was itself an alias: the owner's list forgets it
            self._remove("aliases", user_id)
            with contextlib.suppress(aerospike_errors.RecordNotFound):
                self.client.operate((PROFILES_NS, "alias_lists", owner), [
                    list_operations.list_remove_by_value("ids", user_id, aerospike.LIST_RETURN_NONE)])
