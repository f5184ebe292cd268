"""Identity at the door: which user an anonymous id belongs to, and why a link was refused.

The profile store decides every link (`ProfileStore.link_alias`, atomic); the rule job learns of it
from the `IdentifyRecord` the Ingestion API produces once the store has it. `LinkCache` remembers the
links this process made or looked up, so the hot path asks the store only about ids it has not seen.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Literal

from server.domain.pipeline import MAX_ALIASES
from server.stores.profile_store import AliasLink

LINK_CACHE_SIZE = 50_000
# A link never moves to another user, but a deleted user's links go: a cached one is trusted this long
LINK_CACHE_TTL_S = 60.0


class LinkCache:
    """Known links (anonymous id -> user), the newest `size` of them, each trusted for `ttl_s` seconds."""

    def __init__(self, size: int = LINK_CACHE_SIZE, ttl_s: float = LINK_CACHE_TTL_S) -> None:
        self.size, self.ttl_s = size, ttl_s
        self._links: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, anonymous_id: str) -> str | None:
        entry = self._links.get(anonymous_id)
        if entry is None:
            return None
        user_id, expires = entry
        if expires < time.monotonic():
            del self._links[anonymous_id]
            return None
        return user_id

    def put(self, anonymous_id: str, user_id: str) -> None:
        self._links[anonymous_id] = (user_id, time.monotonic() + self.ttl_s)
        self._links.move_to_end(anonymous_id)
        while len(self._links) > self.size:
            self._links.popitem(last=False)

    def __len__(self) -> int:
        return len(self._links)


def made(link: AliasLink) -> Literal["linked", "already linked"]:
    """How an answer names a link that was made: now, or before."""
    return "linked" if link.status == "linked" else "already linked"


def refusal(anonymous_id: str, user_id: str, link: AliasLink) -> str:
    """Why the store would not link the two ids, in one line naming them (and the owner: the caller,
    trusted with write scope, can read that user anyway, and needs the name to act on the conflict)."""
    if link.status == "conflict":
        return f"anonymousId '{anonymous_id}' is already linked to another user, '{link.owner}'"
    if link.status == "limit":
        return f"userId '{user_id}' already has {MAX_ALIASES} anonymous ids linked, the most one user may have"
    if link.status == "known_user":
        return (f"anonymousId '{anonymous_id}' is a known user (or has anonymous ids of its own): "
                "two known users are never merged")
    if link.status == "alias_user":
        return f"userId '{user_id}' is an anonymous id linked to user '{link.owner}': identify with that user"
    raise ValueError(f"the link was made ({link.status}); there is nothing to refuse")
