"""The profile store: user profiles and segment memberships, behind one interface.

PostgreSQL serves it on the local target (`postgres_profiles`), Aerospike on Kubernetes
(`aerospike_profiles`). Writes are batch-shaped because the rule engine writes in batches, and
applying the same membership change twice changes nothing (so replays after a crash are safe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from server.domain.membership import MembershipChange
from server.domain.profile import Profile


@dataclass(frozen=True, slots=True)
class Membership:
    segment_id: str
    user_id: str
    segment_version: int
    entered_at: datetime
    source: str = "rule"


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
        """The segments a user is in now."""

    async def apply_changes(self, changes: Sequence[MembershipChange], source: str = "rule") -> int:
        """Apply entered/exited changes in order; returns how many changed the store (replays count 0)."""

    async def segment_members(self, segment_id: str, after: str | None, limit: int) -> list[Membership]:
        """A segment's members ordered by user id, strictly after `after`."""

    async def members_among(self, segment_id: str, user_ids: Sequence[str]) -> set[str]:
        """Which of `user_ids` are in the segment now (one round trip)."""

    async def segment_size(self, segment_id: str) -> int:
        """How many users are in the segment now."""

    async def change_counts(self, segment_id: str, since: datetime) -> ChangeCounts:
        """How many users entered and exited the segment since `since`."""

    async def remove_segment(self, segment_id: str) -> int:
        """Drop every membership of a deleted segment; returns how many there were."""


def newest_per_user(profiles: Sequence[Profile]) -> dict[str, Profile]:
    """One profile per user: the one with the most events, the later one on a tie."""
    latest: dict[str, Profile] = {}
    for profile in profiles:
        current = latest.get(profile.user_id)
        if current is None or profile.event_count >= current.event_count:
            latest[profile.user_id] = profile
    return latest
