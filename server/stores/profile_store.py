"""The profile store: user profiles and segment memberships, behind one interface.

PostgreSQL serves it on the local target (`postgres_profiles`), Aerospike on Kubernetes
(`aerospike_profiles`). Writes are batch-shaped because the rule engine writes in batches, and
applying the same membership change twice changes nothing (so replays after a crash are safe).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import combinations
from typing import Any, Literal, Protocol

from server.domain.membership import MembershipChange
from server.domain.pipeline import Removal
from server.domain.profile import Profile

# What linking an anonymous id to a user did: `linked` (new), `already` (to this user before), or why not:
# `conflict` (it is another user's: `owner`), `limit` (the user has MAX_ALIASES), `known_user` (the
# anonymous id is itself a known user, or has aliases of its own), `alias_user` (the userId is an alias of `owner`).
LinkStatus = Literal["linked", "already", "conflict", "limit", "known_user", "alias_user"]


@dataclass(frozen=True, slots=True)
class Membership:
    segment_id: str
    user_id: str
    segment_version: int
    entered_at: datetime
    source: str = "rule"
    # why the user entered (`MembershipChange.because` of the entry that holds); None when none was given
    because: Mapping[str, Any] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class AliasLink:
    status: LinkStatus
    owner: str | None = None  # for `conflict` and `alias_user`: the user the id belongs to

    @property
    def made(self) -> bool:
        """The anonymous id belongs to the user now (new, or before)."""
        return self.status in ("linked", "already")


@dataclass(frozen=True, slots=True)
class ChangeCounts:
    entered: int
    exited: int


@dataclass(frozen=True, slots=True)
class PairOverlap:
    """How many users are members of both `a` and `b`."""

    a: str
    b: str
    intersection: int


@dataclass(frozen=True, slots=True)
class Overlap:
    """How the current members of a few segments overlap: each one's size, the users in all of them, and
    the users in each unordered pair (in the order the segments were asked for)."""

    sizes: Mapping[str, int]
    intersection: int
    pairs: tuple[PairOverlap, ...]

    @classmethod
    def from_combinations(cls, segment_ids: Sequence[str], users_per_mask: Mapping[int, int]) -> Overlap:
        """From how many users are in exactly each combination of the segments: bit i of a mask stands for
        `segment_ids[i]`. At most 2^len(segment_ids) entries, whatever the segments' sizes."""
        def users_in(mask: int) -> int:
            return sum(n for m, n in users_per_mask.items() if m & mask == mask)

        every = (1 << len(segment_ids)) - 1
        return cls(sizes={sid: users_in(1 << i) for i, sid in enumerate(segment_ids)},
                   intersection=users_in(every),
                   pairs=tuple(PairOverlap(segment_ids[i], segment_ids[j], users_in(1 << i | 1 << j))
                               for i, j in combinations(range(len(segment_ids)), 2)))


HOUR = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class HourPoint:
    """One hour of a segment's history: who entered and exited in it, and how many members it had at its end."""

    at: datetime  # the hour's start, UTC
    entered: int
    exited: int
    size: int


def hour_points(first_hour: datetime, hours: int, changes: Mapping[datetime, ChangeCounts], later: ChangeCounts,
                size_now: int) -> list[HourPoint]:
    """Every hour from `first_hour` on, zeros included, from the ledger's counts per hour start (`changes`),
    the counts after the last hour (`later`) and the current size. The size at the end of an hour is the
    current size less the net changes after it: the ledger is the only record of past sizes."""
    starts = [first_hour + i * HOUR for i in range(hours)]
    size = size_now - (later.entered - later.exited)
    points: list[HourPoint] = []
    for start in reversed(starts):  # walk back from now: each hour's end size undoes the changes after it
        counts = changes.get(start, ChangeCounts(0, 0))
        points.append(HourPoint(start, counts.entered, counts.exited, size))
        size -= counts.entered - counts.exited
    return points[::-1]


@dataclass(frozen=True, slots=True)
class TraitCount:
    value: Any
    count: int


@dataclass(frozen=True, slots=True)
class TraitBreakdown:
    """A segment's members counted by the value of one trait: the most common `values` (most first, ties in
    the order of the values' JSON text), the members whose value is not among them (`other`), and those
    without the trait (`missing`: no profile, no such trait, or null, as the rule language's `exists` sees it)."""

    members: int
    values: tuple[TraitCount, ...]
    other: int
    missing: int

    @classmethod
    def tally(cls, values: Iterable[Any], limit: int) -> TraitBreakdown:
        """From one value per member (None where it has none)."""
        counts: Counter[str] = Counter()
        originals: dict[str, Any] = {}
        members = missing = 0
        for value in values:
            members += 1
            if value is None:
                missing += 1
                continue
            text = json_text(value)  # one key per JSON value: 1 and true (equal in Python) stay apart
            counts[text] += 1
            originals.setdefault(text, value)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        top = tuple(TraitCount(originals[text], n) for text, n in ranked[:limit])
        return cls(members, top, sum(n for _, n in ranked[limit:]), missing)


def json_text(value: Any) -> str:
    """A value's JSON text as PostgreSQL prints jsonb scalars (no ASCII escaping), for ordering ties."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def trait_at(profile: Mapping[str, Any] | None, path: str) -> Any:
    """The value at the dotted `path` in a stored profile's traits; None when absent (or null)."""
    value: Any = (profile or {}).get("traits")
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


class ProfileStore(Protocol):
    """What the services and the rule engine need from the profile store."""

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        """The profile JSON (`Profile.to_json()`), or None for an unknown user."""

    async def get_profiles(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The profiles of those users that have one, by user id (one round trip)."""

    async def put_profiles(self, profiles: Sequence[Profile]) -> None:
        """Upsert profiles, stored as `Profile.to_json()`. Per user the one with the most events wins,
        the later one on a tie, so a snapshot arriving late never replaces a newer one."""

    async def scan_profiles(self, after: str | None, limit: int,
                            updated_since: datetime | None = None) -> list[dict[str, Any]]:
        """Profiles ordered by user id, strictly after `after`, at most `limit` (for paging);
        only those written at or after `updated_since` when it is given."""

    async def user_memberships(self, user_id: str) -> list[Membership]:
        """The segments a user is in now, each with the reason it entered for."""

    async def apply_changes(self, changes: Sequence[MembershipChange], source: str = "rule") -> int:
        """Apply entered/exited changes in order; returns how many changed the store (replays count 0).
        Each change's `because` is kept in the ledger, and an entry's on the membership it makes (a replayed
        entry keeps the reason of the first)."""

    async def segment_members(self, segment_id: str, after: str | None, limit: int) -> list[Membership]:
        """A segment's members ordered by user id, strictly after `after` (without their `because`: exports
        and audiences page through many and need none)."""

    async def members_among(self, segment_id: str, user_ids: Sequence[str]) -> set[str]:
        """Which of `user_ids` are in the segment now (one round trip)."""

    async def segment_size(self, segment_id: str) -> int:
        """How many users are in the segment now."""

    async def change_counts(self, segment_id: str, since: datetime) -> ChangeCounts:
        """How many users entered and exited the segment since `since`."""

    async def overlap(self, segment_ids: Sequence[str]) -> Overlap:
        """How the current members of `segment_ids` (2 to 10, distinct) overlap, in one read of the store
        (not one per user)."""

    async def hourly_history(self, segment_id: str, first_hour: datetime, hours: int) -> list[HourPoint]:
        """`hours` consecutive hours from `first_hour` (an hour start, UTC) from the membership ledger: entries,
        exits and the size at each hour's end (the current size less the net changes after it). An erased user's
        changes leave the ledger with the user, so past sizes read as if the user had never been a member."""

    async def trait_breakdown(self, segment_id: str, trait: str, limit: int) -> TraitBreakdown:
        """The segment's members counted by the value of the trait at the dotted path `trait` of their stored
        profiles, the `limit` most common values listed."""

    async def remove_segment(self, segment_id: str) -> int:
        """Drop every membership of a deleted segment; returns how many there were."""

    async def link_alias(self, anonymous_id: str, user_id: str, limit: int) -> AliasLink:
        """Link `anonymous_id` to `user_id` once, atomically: never moved to another user, never beyond
        `limit` aliases per user, never between two known users."""

    async def canonical_ids(self, ids: Sequence[str]) -> dict[str, str]:
        """For those of `ids` that are linked anonymous ids: the user each belongs to (one round trip)."""

    async def resolve_profile(self, user_id: str) -> tuple[str, dict[str, Any] | None]:
        """(the user `user_id` belongs to — itself unless it is a linked anonymous id —, that user's profile),
        in one round trip: the read path of the Segment API."""

    async def resolve_memberships(self, user_id: str) -> tuple[str, list[Membership]]:
        """(the user `user_id` belongs to, that user's memberships), in one round trip."""

    async def aliases_of(self, user_id: str) -> list[str]:
        """The anonymous ids linked to `user_id`, oldest link first."""

    async def remove_user(self, user_id: str, reason: Removal) -> None:
        """Drop the user's profile and memberships; `deleted` also drops its aliases (both ways) and its
        membership history (erasure), `merged` keeps the id as an alias of the user it merged into."""


def newest_per_user(profiles: Sequence[Profile]) -> dict[str, Profile]:
    """One profile per user: the one with the most events, the later one on a tie."""
    latest: dict[str, Profile] = {}
    for profile in profiles:
        current = latest.get(profile.user_id)
        if current is None or profile.event_count >= current.event_count:
            latest[profile.user_id] = profile
    return latest
