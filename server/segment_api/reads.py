"""Reads of a user by any of its ids, and reads that wait for the caller's own event (read-your-writes).

An id may be an anonymous id linked to a known user: the answer is then that user's. `after=<eventId>`
waits until the user's stored profile lists the event among `recentEvents`, the ids of the last
`RECENT_EVENT_IDS` events the rule job applied to it (an event merged in from an alias counts: its id
moves into the known user's profile with the merge). So `after` can see only the user's last 16 events.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from server.stores.profile_store import ProfileStore

# one read of the store per poll: fast enough for a human, negligible for PostgreSQL
POLL_S = 0.025


@dataclass(frozen=True, slots=True)
class UserRead:
    """What the store holds for the id a caller asked by."""

    asked: str
    user_id: str  # the canonical id: `asked`, or the user it is an alias of
    profile: dict[str, Any] | None
    applied: bool  # the awaited event is in the profile (true when nothing was awaited)

    @property
    def resolved_from(self) -> str | None:
        """The alias the caller asked by, when it was one."""
        return self.asked if self.asked != self.user_id else None


def has_applied(profile: dict[str, Any] | None, event_id: str) -> bool:
    return profile is not None and event_id in (profile.get("recentEvents") or [])


async def read_user(store: ProfileStore, user_id: str, after: str | None, wait_s: float) -> UserRead:
    """The user's profile, once it has applied `after` (if given) or `wait_s` has passed (then not `applied`).

    The id is resolved again on every poll: an anonymous id may be linked while the read waits, and the
    awaited event then arrives in the known user's profile.
    """
    deadline = time.monotonic() + wait_s
    while True:
        canonical, profile = await store.resolve_profile(user_id)
        if after is None or has_applied(profile, after):
            return UserRead(user_id, canonical, profile, applied=True)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return UserRead(user_id, canonical, profile, applied=False)
        await asyncio.sleep(min(POLL_S, remaining))
