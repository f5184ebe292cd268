"""Identity end to end on a real local stack: an anonymous visitor becomes a known user, a user is
deleted, the job is killed mid-merge, and Segment's own Python client drives the tracking API."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from confluent_kafka import Message

from server.stores.topics import SEGMENT_MEMBERSHIP
from tests.e2e.stack import Stack, eventually, read_topic, signal_component, up_again
from tests.e2e.test_rule_engine import create, segment_ids

pytestmark = pytest.mark.e2e


def rich(marker: str) -> dict[str, Any]:
    return {"all": [{"field": "cohort", "operator": "eq", "value": marker},
                    {"field": "totalSpent", "operator": "gt", "value": 1000}]}


def anonymous_purchase(stack: Stack, visitor: str, amount: float, marker: str) -> str:
    response = stack.events.post("/api/events", json={"anonymousId": visitor, "eventType": "purchase",
                                                      "properties": {"amount": amount, "cohort": marker}})
    assert response.status_code == 202, response.text
    return str(response.json()["eventId"])


def identify(stack: Stack, user: str, visitor: str) -> httpx.Response:
    return stack.events.post("/api/identify", json={"userId": user, "anonymousId": visitor})


def profile(stack: Stack, user: str, **params: Any) -> dict[str, Any] | None:
    response = stack.segments.get(f"/api/users/{user}/profile", params=params)
    return response.json() if response.status_code == 200 else None  # type: ignore[no-any-return]


def total_spent(stack: Stack, user: str) -> float | None:
    found = profile(stack, user)
    return found["totalSpent"] if found is not None else None


def memberships_of(stack: Stack, user: str) -> list[str]:
    """The store's own rows for exactly this id (the API answers for the canonical user)."""
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT segment_id::text FROM segment_memberships WHERE user_id = %s", (user,))
        return [row[0] for row in rows.fetchall()]


def test_an_anonymous_visitor_who_buys_then_signs_in_is_in_the_segment_as_the_known_user(
        running_stack: Stack) -> None:
    marker = uuid.uuid4().hex[:8]
    segment = create(running_stack, rich(marker))
    visitor, alice = f"anon-{marker}", f"alice-{marker}"
    time.sleep(0.5)
    anonymous_purchase(running_stack, visitor, 600, marker)
    last = anonymous_purchase(running_stack, visitor, 600, marker)
    seen = profile(running_stack, visitor, after=last)
    assert seen is not None and seen["anonymous"] is True and seen["totalSpent"] == 1200
    answer = identify(running_stack, alice, visitor)
    assert answer.status_code == 202 and answer.json()["status"] == "linked", answer.text
    started = time.monotonic()
    eventually(lambda: segment in segment_ids(running_stack, alice), what="the known user in the segment")
    print(f"\nidentify → known user in the segment: {(time.monotonic() - started) * 1000:.0f} ms")
    merged = profile(running_stack, alice)
    assert merged is not None and merged["totalSpent"] == 1200 and merged["aliases"] == [visitor]
    assert "anonymous" not in merged or merged["anonymous"] is False
    eventually(lambda: memberships_of(running_stack, visitor) == [], what="the visitor's own membership gone")

    later = anonymous_purchase(running_stack, visitor, 100, marker)  # only the anonymous id: alice's
    by_alias = profile(running_stack, visitor, after=later)
    assert by_alias is not None and by_alias["userId"] == alice and by_alias["totalSpent"] == 1300
    assert identify(running_stack, alice, visitor).json()["status"] == "already linked"
    taken = identify(running_stack, f"bob-{marker}", visitor)
    assert taken.status_code == 409 and "anonymousId" in taken.text
    time.sleep(1)
    assert total_spent(running_stack, alice) == 1300  # the repeated identify merged nothing twice


def test_a_deleted_user_is_gone_with_its_aliases_and_its_segments_hear_the_exit(running_stack: Stack) -> None:
    marker = uuid.uuid4().hex[:8]
    segment = create(running_stack, rich(marker))
    visitor, carol = f"anon-{marker}", f"carol-{marker}"
    time.sleep(0.5)
    anonymous_purchase(running_stack, visitor, 1500, marker)
    assert identify(running_stack, carol, visitor).status_code == 202
    eventually(lambda: segment in segment_ids(running_stack, carol), what="carol in the segment")

    deleted = running_stack.segments.delete(f"/api/users/{visitor}")  # by the alias: the person goes
    assert deleted.status_code == 202, deleted.text
    assert deleted.json()["userId"] == carol and deleted.json()["aliases"] == [visitor]
    started = time.monotonic()
    eventually(lambda: profile(running_stack, carol) is None and profile(running_stack, visitor) is None
               and not segment_ids(running_stack, carol), timeout_s=10, what="profile, alias and membership gone")
    print(f"\ndelete → profile, alias and membership gone: {(time.monotonic() - started) * 1000:.0f} ms")
    def carols_exit(m: Message) -> bool:  # parsed: the visitor's own exit names carol too (its `because`)
        value = m.value() or b""
        return b'"exited"' in value and orjson.loads(value).get("userId") == carol

    exits = read_topic(running_stack, SEGMENT_MEMBERSHIP, keep=carols_exit, expected=1, quiet_s=1)
    assert [orjson.loads(m.value() or b"")["segmentId"] for m in exits] == [segment]
    with psycopg.connect(running_stack.database_url) as conn:
        audit = conn.execute("SELECT user_id_hash, aliases FROM user_deletions ORDER BY id DESC LIMIT 1").fetchone()
        leftovers = conn.execute("SELECT count(*) FROM user_aliases WHERE user_id = %s OR anonymous_id = %s",
                                 (carol, visitor)).fetchone()
    assert audit is not None and carol not in audit[0] and audit[1] == 1 and leftovers == (0,)

    assert running_stack.events.post("/api/events", json={"userId": carol, "eventType": "purchase",
                                                           "properties": {"amount": 5}}).status_code == 202
    fresh = eventually(lambda: profile(running_stack, carol), what="a fresh profile")
    assert fresh["totalSpent"] == 5 and fresh["eventCount"] == 1 and fresh["aliases"] == []


def test_a_job_killed_while_visitors_sign_in_counts_every_purchase_once(running_stack: Stack) -> None:
    """Visitors buy, then sign in while the job is SIGKILLed: some identifies are processed before the kill,
    some merges after the restart (replayed from the last checkpoint), some both. Counts stay exact."""
    marker = uuid.uuid4().hex[:8]
    visitors = [f"anon-{marker}-{i}" for i in range(30)]
    for i, visitor in enumerate(visitors):
        for _ in range(i % 3 + 1):
            anonymous_purchase(running_stack, visitor, 10, marker)
    eventually(lambda: all(total_spent(running_stack, v) == (i % 3 + 1) * 10 for i, v in enumerate(visitors)),
               timeout_s=30, what="the visitors' purchases applied")
    identified: list[str] = []

    def sign_in() -> None:
        for visitor in visitors:
            if identify(running_stack, visitor.replace("anon", "user"), visitor).status_code == 202:
                identified.append(visitor)
            time.sleep(0.02)

    signer = threading.Thread(target=sign_in)
    signer.start()
    signal_component(running_stack, "rule-engine", signal.SIGKILL, when=lambda: len(identified) >= 10)
    signer.join(30)
    up_again(running_stack, "rule-engine")
    assert identified == visitors  # the Ingestion API does not depend on the job

    def totals() -> dict[str, float | None]:
        return {v: total_spent(running_stack, v.replace("anon", "user")) for v in visitors}

    expected = {v: float((i % 3 + 1) * 10) for i, v in enumerate(visitors)}
    eventually(lambda: totals() == expected, timeout_s=60, what="every merged profile counted once")
    time.sleep(2)  # anything replayed from before the kill has been applied by now
    assert totals() == expected
    with psycopg.connect(running_stack.database_url) as conn:
        left = conn.execute("SELECT count(*) FROM user_profiles WHERE user_id LIKE %s",
                            (f"anon-{marker}-%",)).fetchone()
    print(f"\njob killed while visitors sign in: {len(identified)} of {len(visitors)} identifies accepted, "
          f"{sum(totals()[v] == expected[v] for v in visitors)} totals exact, {left[0] if left else '?'} visitor "
          "profiles left")
    assert left == (0,)  # no visitor profile is left behind


def test_segments_python_client_tracks_a_visitor_and_identifies_them(running_stack: Stack) -> None:
    from segment.analytics.client import Client

    marker = uuid.uuid4().hex[:8]
    visitor, dave = f"anon-{marker}", f"dave-{marker}"
    client = Client(write_key="local-write-key", host=str(running_stack.events.base_url), sync_mode=True,
                    max_retries=1)
    client.track(anonymous_id=visitor, event="Order Completed", properties={"amount": 42, "cohort": marker})
    client.track(anonymous_id=visitor, event="Product Viewed", properties={"sku": "s-1"})
    client.identify(user_id=dave, anonymous_id=visitor, traits={"plan": "pro"})
    client.flush()
    known = eventually(lambda: (p := profile(running_stack, dave)) and p["eventCount"] >= 2 and p,
                       what="the known user's profile with the visitor's events")
    assert known["eventCounts"]["Order Completed"] == 1 and known["eventCounts"]["Product Viewed"] == 1
    assert known["traits"]["plan"] == "pro" and known["aliases"] == [visitor]
