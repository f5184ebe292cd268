"""One contract for every profile store adapter: PostgreSQL here, Aerospike when AEROSPIKE_HOSTS is set."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from server.domain.events import UserEvent
from server.domain.membership import MembershipChange
from server.domain.profile import Profile, apply_event
from server.stores.postgres import Database
from server.stores.postgres_profiles import PostgresProfileStore
from server.stores.profile_store import (
    AliasLink,
    HourPoint,
    Overlap,
    PairOverlap,
    ProfileStore,
    TraitBreakdown,
    TraitCount,
)

pytestmark = pytest.mark.api
T = TypeVar("T")
NOW = datetime.now(UTC).replace(microsecond=0)

ADAPTERS = [
    "postgres",
    pytest.param("aerospike", marks=[pytest.mark.live, pytest.mark.skipif(
        not os.environ.get("AEROSPIKE_HOSTS"), reason="set AEROSPIKE_HOSTS=host:3000 to run against Aerospike")]),
]


def run(coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro())


async def open_store(kind: str, database_url: str) -> tuple[ProfileStore, Callable[[], Coroutine[Any, Any, None]]]:
    if kind == "postgres":
        db = Database(database_url, 4, 5)
        await db.open(10)
        return PostgresProfileStore(db), db.close
    from server.stores.aerospike_profiles import AerospikeProfileStore, connect

    client = connect(os.environ["AEROSPIKE_HOSTS"])

    async def close() -> None:
        client.close()

    return AerospikeProfileStore(client), close


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest, database_url: str) -> tuple[str, str]:
    return request.param, database_url


def contract(body: Callable[[ProfileStore, str], Coroutine[Any, Any, None]]) -> Callable[[tuple[str, str]], None]:
    """Run `body(store, unique_prefix)` against the adapter under test."""
    def test(adapter: tuple[str, str]) -> None:
        async def go() -> None:
            store, close = await open_store(*adapter)
            try:
                await body(store, uuid.uuid4().hex[:8])
            finally:
                await close()
        run(go)

    test.__doc__ = body.__doc__
    return test


def change(user: str, segment: str, kind: str, version: int = 1, at: datetime = NOW) -> MembershipChange:
    return MembershipChange(user, segment, kind, at, version)  # type: ignore[arg-type]


def profile(user: str, events: int = 0, **traits: Any) -> Profile:
    return Profile(user, traits=traits, event_count=events)


async def _profiles_roundtrip(store: ProfileStore, p: str) -> None:
    """Profiles are upserted (the one with most events wins, the later on a tie), read back as their JSON
    and paged in user-id order."""
    await store.put_profiles([profile(f"{p}-b", n=1), profile(f"{p}-a", n=1), profile(f"{p}-b", n=2)])
    assert await store.get_profile(f"{p}-b") == profile(f"{p}-b", n=2).to_json()
    # a snapshot arriving late (fewer events) never replaces a newer one, in one batch or across batches
    await store.put_profiles([profile(f"{p}-c", 3), profile(f"{p}-c", 2)])
    await store.put_profiles([profile(f"{p}-c", 1)])
    assert await store.get_profile(f"{p}-c") == profile(f"{p}-c", 3).to_json()
    await store.put_profiles([profile(f"{p}-c", 4)])
    assert await store.get_profile(f"{p}-c") == profile(f"{p}-c", 4).to_json()
    assert await store.get_profile(f"{p}-missing") is None
    many = await store.get_profiles([f"{p}-a", f"{p}-missing", f"{p}-b"])
    assert many == {f"{p}-a": profile(f"{p}-a", n=1).to_json(), f"{p}-b": profile(f"{p}-b", n=2).to_json()}
    assert await store.get_profiles([]) == {}
    page = await store.scan_profiles(f"{p}-", 10)
    assert [x["userId"] for x in page if x["userId"].startswith(p)] == [f"{p}-a", f"{p}-b", f"{p}-c"]
    assert [x["userId"] for x in await store.scan_profiles(f"{p}-a", 1)] == [f"{p}-b"]
    rich = apply_event(None, UserEvent(f"{p}-d", "purchase", "e1", NOW, {"amount": 12.5, "plan": "pro"}),
                       timedelta(days=1))
    await store.put_profiles([rich])
    stored = await store.get_profile(f"{p}-d")
    assert stored is not None and Profile.from_json(stored) == rich  # what the job wrote is what it reads


async def _memberships(store: ProfileStore, p: str) -> None:
    """Changes apply once; repeats are no-ops; members page by user id; stats count real changes."""
    seg = str(uuid.uuid4())
    applied = await store.apply_changes([change(f"{p}-2", seg, "entered"), change(f"{p}-1", seg, "entered"),
                                         change(f"{p}-1", seg, "entered")])
    assert applied == 2
    assert await store.segment_size(seg) == 2
    first = await store.segment_members(seg, None, 1)
    assert [m.user_id for m in first] == [f"{p}-1"]
    assert [m.user_id for m in await store.segment_members(seg, first[-1].user_id, 10)] == [f"{p}-2"]
    mine = await store.user_memberships(f"{p}-1")
    assert [(m.segment_id, m.segment_version, m.entered_at) for m in mine] == [(seg, 1, NOW)]
    assert await store.members_among(seg, [f"{p}-1", f"{p}-3", f"{p}-2", f"{p}-1"]) == {f"{p}-1", f"{p}-2"}
    assert await store.members_among(str(uuid.uuid4()), [f"{p}-1"]) == set()
    assert await store.members_among(seg, []) == set()
    assert await store.apply_changes([change(f"{p}-1", seg, "exited"), change(f"{p}-1", seg, "exited")]) == 1
    assert await store.user_memberships(f"{p}-1") == []
    counts = await store.change_counts(seg, NOW - timedelta(hours=1))
    assert (counts.entered, counts.exited) == (2, 1)
    assert await store.remove_segment(seg) == 1
    assert await store.segment_size(seg) == 0


async def _changes_in_order(store: ProfileStore, p: str) -> None:
    """One batch may enter, exit and re-enter the same user: applied in order, each recorded once."""
    seg, user = str(uuid.uuid4()), f"{p}-flip"
    batch = [change(user, seg, "entered"), change(user, seg, "exited"), change(user, seg, "entered", version=2)]
    assert await store.apply_changes(batch) == 3
    assert [(m.segment_id, m.segment_version) for m in await store.user_memberships(user)] == [(seg, 2)]
    assert await store.apply_changes(batch[2:]) == 0  # a replayed tail changes nothing
    counts = await store.change_counts(seg, NOW - timedelta(hours=1))
    assert (counts.entered, counts.exited) == (2, 1)
    assert await store.apply_changes([]) == 0


async def _aliases(store: ProfileStore, p: str) -> None:
    """An anonymous id is linked once and never moved; a user takes at most `limit`; known users never merge."""
    alice, bob = f"{p}-alice", f"{p}-bob"
    assert (await store.link_alias(f"{p}-v1", alice, 2)).status == "linked"
    assert (await store.link_alias(f"{p}-v1", alice, 2)).status == "already"
    assert await store.link_alias(f"{p}-v1", bob, 2) == AliasLink("conflict", alice)
    assert await store.link_alias(f"{p}-v9", f"{p}-v1", 2) == AliasLink("alias_user", alice)
    assert (await store.link_alias(alice, bob, 2)).status == "known_user"  # alice has aliases of her own
    await store.put_profiles([Profile(bob, event_count=1)])
    assert (await store.link_alias(bob, alice, 2)).status == "known_user"  # bob's profile is a known user's
    await store.put_profiles([Profile(f"{p}-v2", event_count=1, anonymous=True)])
    assert (await store.link_alias(f"{p}-v2", alice, 2)).status == "linked"
    assert (await store.link_alias(f"{p}-v3", alice, 2)).status == "limit"
    assert await store.aliases_of(alice) == [f"{p}-v1", f"{p}-v2"]
    assert await store.canonical_ids([f"{p}-v1", alice, f"{p}-v3"]) == {f"{p}-v1": alice}
    assert await store.canonical_ids([]) == {}
    seg = str(uuid.uuid4())
    await store.put_profiles([Profile(alice, event_count=3)])
    await store.apply_changes([change(alice, seg, "entered")])
    assert await store.resolve_profile(f"{p}-v1") == (alice, Profile(alice, event_count=3).to_json())
    assert await store.resolve_profile(f"{p}-nobody") == (f"{p}-nobody", None)
    canonical, memberships = await store.resolve_memberships(f"{p}-v2")
    assert canonical == alice and [m.segment_id for m in memberships] == [seg]
    assert await store.resolve_memberships(f"{p}-nobody") == (f"{p}-nobody", [])


async def _remove_user(store: ProfileStore, p: str) -> None:
    """A merged id loses its profile and memberships but stays an alias; a deleted user loses everything."""
    seg, alice, visitor = str(uuid.uuid4()), f"{p}-alice", f"{p}-v"
    await store.put_profiles([Profile(alice, event_count=1), Profile(visitor, event_count=1, anonymous=True)])
    await store.apply_changes([change(alice, seg, "entered"), change(visitor, seg, "entered")])
    await store.link_alias(visitor, alice, 100)
    await store.remove_user(visitor, "merged")
    assert await store.get_profile(visitor) is None and await store.user_memberships(visitor) == []
    assert await store.canonical_ids([visitor]) == {visitor: alice}
    await store.remove_user(alice, "deleted")
    assert await store.get_profile(alice) is None and await store.user_memberships(alice) == []
    assert await store.aliases_of(alice) == [] and await store.canonical_ids([visitor]) == {}
    assert await store.segment_size(seg) == 0


async def _overlap(store: ProfileStore, p: str) -> None:
    """Sizes, the users in all the segments and in each pair, from the current members only."""
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    await store.apply_changes([*(change(f"{p}-{u}", a, "entered") for u in ("ann", "ben", "cid", "dan")),
                               *(change(f"{p}-{u}", b, "entered") for u in ("ben", "cid", "dan", "eve")),
                               *(change(f"{p}-{u}", c, "entered") for u in ("dan", "eve", "fay")),
                               change(f"{p}-fay", c, "exited"), change(f"{p}-ann", b, "entered"),
                               change(f"{p}-ann", b, "exited")])  # what left counts nowhere
    overlap = await store.overlap([a, b, c])
    assert dict(overlap.sizes) == {a: 4, b: 4, c: 2} and overlap.intersection == 1
    assert overlap.pairs == (PairOverlap(a, b, 3), PairOverlap(a, c, 1), PairOverlap(b, c, 2))
    empty = str(uuid.uuid4())
    assert await store.overlap([empty, a]) == Overlap({empty: 0, a: 4}, 0, (PairOverlap(empty, a, 0),))


async def _hourly_history(store: ProfileStore, p: str) -> None:
    """Entries and exits per hour, every hour present, sizes from the current size less the changes after;
    an erased user's changes go with the user."""
    seg, hour = str(uuid.uuid4()), NOW.replace(minute=0, second=0) - timedelta(hours=5)
    minute = timedelta(minutes=1)
    await store.apply_changes([
        change(f"{p}-ann", seg, "entered", at=hour + minute), change(f"{p}-ben", seg, "entered", at=hour + 2 * minute),
        change(f"{p}-ann", seg, "exited", at=hour + timedelta(hours=1, minutes=5)),
        change(f"{p}-cid", seg, "entered", at=hour + timedelta(hours=3, minutes=5)),  # after the hours asked for
    ])
    points = await store.hourly_history(seg, hour, 3)
    assert points == [HourPoint(hour, 2, 0, 2), HourPoint(hour + timedelta(hours=1), 0, 1, 1),
                      HourPoint(hour + timedelta(hours=2), 0, 0, 1)]
    assert await store.hourly_history(str(uuid.uuid4()), hour, 2) == [
        HourPoint(hour, 0, 0, 0), HourPoint(hour + timedelta(hours=1), 0, 0, 0)]
    if isinstance(store, PostgresProfileStore):  # Aerospike's counters name nobody, so they keep the erased
        await store.remove_user(f"{p}-ben", "deleted")
        assert [x.size for x in await store.hourly_history(seg, hour, 3)] == [1, 0, 0]


async def _trait_breakdown(store: ProfileStore, p: str) -> None:
    """Members by one trait's value (nested paths read through objects only), the rest as other or missing."""
    seg = str(uuid.uuid4())
    traits: dict[str, dict[str, Any]] = {
        "ann": {"country": "de", "address": {"city": "Berlin"}}, "ben": {"country": "de", "address": {"city": "Rome"}},
        "cid": {"country": "fr", "address": ["city"]}, "dan": {"country": "it"}, "eve": {"country": None},
        "fay": {"plan": "pro"}, "gus": {"country": 3}, "hal": {"country": "3"}}
    await store.put_profiles([profile(f"{p}-{u}", 1, **t) for u, t in traits.items()])
    await store.apply_changes([change(f"{p}-{u}", seg, "entered") for u in [*traits, "ivy"]])  # ivy: no profile
    result = await store.trait_breakdown(seg, "country", 3)
    # ties in the order of their JSON text: "3" and "fr" (strings, quoted) before it and 3
    assert result == TraitBreakdown(9, (TraitCount("de", 2), TraitCount("3", 1), TraitCount("fr", 1)), 2, 3)
    everything = await store.trait_breakdown(seg, "country", 100)
    assert [v.value for v in everything.values] == ["de", "3", "fr", "it", 3] and everything.other == 0
    city = await store.trait_breakdown(seg, "address.city", 1)
    assert city == TraitBreakdown(9, (TraitCount("Berlin", 1),), 1, 7)
    assert await store.trait_breakdown(str(uuid.uuid4()), "country", 5) == TraitBreakdown(0, (), 0, 0)


test_overlap = contract(_overlap)
test_hourly_history = contract(_hourly_history)
test_trait_breakdown = contract(_trait_breakdown)


async def _reasons(store: ProfileStore, p: str) -> None:
    """A membership keeps the reason of the entry that made it (a replayed entry changes nothing, a new entry
    after an exit brings its own); reads by the user and by an alias carry it, a segment's pages do not."""
    seg, other, user = str(uuid.uuid4()), str(uuid.uuid4()), f"{p}-why"
    first = {"cause": "event", "eventId": "e-2", "eventType": "purchase", "eventAt": "2026-11-01T12:02:00Z",
             "leaves": [{"path": "rules.all[1]", "value": 2, "result": True, "was": 1},
                        {"path": "rules.all[0]", "value": "Zürich", "result": True, "was": None}]}
    assert await store.apply_changes([MembershipChange(user, seg, "entered", NOW, 1, because=first),
                                      change(user, other, "entered")]) == 2
    assert await store.apply_changes([MembershipChange(user, seg, "entered", NOW, 1, because={"cause": "time"})]) == 0
    mine = {m.segment_id: m.because for m in await store.user_memberships(user)}
    assert mine == {seg: first, other: None}
    assert (await store.link_alias(f"{p}-anon", user, 10)).made
    canonical, via = await store.resolve_memberships(f"{p}-anon")
    assert canonical == user and {m.segment_id: m.because for m in via} == mine
    assert [m.because for m in await store.segment_members(seg, None, 10)] == [None]
    again = {"cause": "definition", "segmentId": seg, "segmentVersion": 2, "leaves": []}
    assert await store.apply_changes([MembershipChange(user, seg, "exited", NOW, 1, because={"cause": "time"}),
                                      MembershipChange(user, seg, "entered", NOW, 2, because=again)]) == 2
    assert {m.segment_id: m.because for m in await store.user_memberships(user)}[seg] == again


test_aliases = contract(_aliases)
test_reasons = contract(_reasons)
test_remove_user = contract(_remove_user)
test_profiles_roundtrip = contract(_profiles_roundtrip)
test_memberships = contract(_memberships)
test_changes_in_order = contract(_changes_in_order)
