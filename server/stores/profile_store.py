"""The profile store: user profiles and segment memberships, behind one interface.

PostgreSQL serves it on the local target (`postgres_profiles`), Aerospike on Kubernetes
(`aerospike_profiles`). Writes are batch-shaped because the rule engine writes in batches, and
applying the same membership change twice changes nothing (so replays after a crash are safe).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
