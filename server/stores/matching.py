"""Which stored profiles match rules now, read page by page: the Segment API's preview and the rule engine's
backfill (which users a new rule can affect) share it, so both count the same users.

A rule referring to other segments sees who is in them now in the store (`members_among`, one query per
referenced segment and page). The caller paces the reading: a page is read only when the previous one was taken.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from server.domain.profile import Profile
from server.domain.rules import Predicate, Rule, compile_rule, references
from server.stores.profile_store import ProfileStore


@dataclass(frozen=True, slots=True)
class MatchedPage:
    """One page of stored profiles: every user in it (by id) and, per rule, those whose profile matches it."""

    user_ids: list[str]
    matching: dict[str, list[str]]


async def matching_pages(store: ProfileStore, rules: Mapping[str, Rule], page: int,
                         after: str | None = None) -> AsyncIterator[MatchedPage]:
    """The store's profiles ordered by user id, strictly after `after`, `page` at a time, each page with the users
    matching each of `rules` (by the caller's key) at the moment it was read."""
    predicates: dict[str, Predicate] = {key: compile_rule(rule) for key, rule in rules.items()}
    referenced = sorted(set().union(*(references(rule) for rule in rules.values())))
    while True:
        raw_page = await store.scan_profiles(after, page)
        if not raw_page:
            return
        ids = [raw["userId"] for raw in raw_page]
        yield MatchedPage(ids, await _matching(store, predicates, referenced, raw_page, ids))
        if len(raw_page) < page:
            return
        after = ids[-1]


async def _matching(store: ProfileStore, predicates: Mapping[str, Predicate], referenced: list[str],
                    raw_page: list[dict[str, Any]], ids: list[str]) -> dict[str, list[str]]:
    members = {sid: await store.members_among(sid, ids) for sid in referenced}  # one query per referenced segment
    # in a thread: the event loop (the rule engine's writer, the Segment API's requests) gets its turns meanwhile
    return await asyncio.to_thread(_match, predicates, referenced, members, raw_page, ids)


def _match(predicates: Mapping[str, Predicate], referenced: list[str], members: Mapping[str, set[str]],
           raw_page: list[dict[str, Any]], ids: list[str]) -> dict[str, list[str]]:
    now = datetime.now(UTC)
    matching: dict[str, list[str]] = {key: [] for key in predicates}
    for raw, user in zip(raw_page, ids, strict=True):
        profile = Profile.from_json(raw)
        member_of = {sid for sid in referenced if user in members[sid]}
        for key, predicate in predicates.items():
            if predicate(profile, now, member_of):
                matching[key].append(user)
    return matching
