"""Reads of a user by any of its ids, and reads that wait for the caller's own event, over HTTP against
the real PostgreSQL: the rule engine's writes are played by writing the profile store as its writer does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from server.domain.events import UserEvent
from server.domain.profile import Profile, apply_event, merge_profiles
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app

pytestmark = pytest.mark.api
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
HIGH, OTHER = "0a6e1f52-1c1e-4a0b-9a55-3c9b0a000001", "0a6e1f52-1c1e-4a0b-9a55-3c9b0a000002"


@pytest.fixture
def client(service_settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as c:
        yield c


def purchases(user: str, amounts: list[float], anonymous: bool = False, prefix: str = "e") -> Profile:
    """The profile the rule engine builds from one purchase per amount (eventIds `<prefix>-1`, `-2`, …)."""
    profile: Profile | None = None
    for i, amount in enumerate(amounts, start=1):
        event = UserEvent(user_id=user, event_type="purchase", event_id=f"{prefix}-{i}", anonymous=anonymous,
                          timestamp=T0 + timedelta(minutes=i), properties={"amount": amount, "plan": "free"},
                          anonymous_id=user if anonymous else None)
        profile = apply_event(profile, event, timedelta(days=1))
    assert profile is not None
    return profile


def write_profile(database_url: str, profile: Profile) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO user_profiles (user_id, profile) VALUES (%s, %s)"
                     " ON CONFLICT (user_id) DO UPDATE SET profile = EXCLUDED.profile",
                     (profile.user_id, Jsonb(profile.to_json())))


def link(database_url: str, anonymous_id: str, user_id: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO user_aliases (anonymous_id, user_id) VALUES (%s, %s)", (anonymous_id, user_id))


def add_membership(database_url: str, user_id: str, segment_id: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO segment_memberships (segment_id, user_id, segment_version, entered_at, source)"
                     " VALUES (%s, %s, 1, now(), 'rule')", (segment_id, user_id))


def in_background(call: Any) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `call()` in a thread; the dict gets its `response` and how many `seconds` it took."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        started = time.monotonic()
        outcome["response"] = call()
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_an_alias_reads_as_its_user_with_aliases_and_without_internal_state(client: TestClient,
                                                                           database_url: str) -> None:
    visitor = purchases("anon-42", [600, 600], anonymous=True, prefix="v")
    known = merge_profiles(None, visitor, "alice", {"email": "alice@example.com"})
    write_profile(database_url, known)
    link(database_url, "anon-42", "alice")
    link(database_url, "anon-43", "alice")
    add_membership(database_url, "alice", HIGH)

    by_alias = client.get("/api/users/anon-42/profile")
    assert by_alias.status_code == 200, by_alias.text
    body = by_alias.json()
    assert body["userId"] == "alice" and body["resolvedFrom"] == "anon-42"
    assert body["aliases"] == ["anon-42", "anon-43"] and body["anonymous"] is False
    assert body["totalSpent"] == 1200 and body["purchaseCount"] == 2 and body["eventCount"] == 2
    assert body["traits"] == {"plan": "free", "email": "alice@example.com"}
    assert body["firstSeen"] == "2026-11-01T12:01:00Z" and body["eventCounts"] == {"purchase": 2}
    assert "history" not in body and "recentEvents" not in body

    by_user = client.get("/api/users/alice/profile").json()
    assert by_user == {**body, "resolvedFrom": None}

    segments = client.get("/api/users/anon-43/segments").json()
    assert segments["userId"] == "alice" and segments["resolvedFrom"] == "anon-43"
    assert [s["segmentId"] for s in segments["segments"]] == [HIGH]
    own = client.get("/api/users/alice/segments").json()
    assert own["resolvedFrom"] is None and [s["segmentId"] for s in own["segments"]] == [HIGH]


def test_an_anonymous_visitor_reads_as_anonymous(client: TestClient, database_url: str) -> None:
    write_profile(database_url, purchases("anon-7", [100], anonymous=True))
    body = client.get("/api/users/anon-7/profile").json()
    assert body["userId"] == "anon-7" and body["anonymous"] is True
    assert body["aliases"] == [] and body["resolvedFrom"] is None and body["totalSpent"] == 100
    assert client.get("/api/users/anon-8/profile").status_code == 404
    assert client.get("/api/users/anon-8/segments").json() == {"userId": "anon-8", "resolvedFrom": None,
                                                               "segments": []}


def test_after_answers_once_the_event_is_applied(client: TestClient, database_url: str) -> None:
    write_profile(database_url, purchases("bob", [10]))
    assert client.get("/api/users/bob/profile", params={"after": "e-1"}).json()["totalSpent"] == 10  # applied already
    thread, outcome = in_background(lambda: client.get("/api/users/bob/profile", params={"after": "e-2", "wait": 5}))
    time.sleep(0.3)
    assert thread.is_alive()  # still waiting for e-2
    write_profile(database_url, purchases("bob", [10, 20]))
    thread.join(10)
    response: httpx.Response = outcome["response"]
    assert response.status_code == 200, response.text
    assert response.json()["totalSpent"] == 30
    assert 0.3 <= outcome["seconds"] < 1.5  # answered when it appeared, not at the end of the wait


def test_after_on_segments_waits_for_the_profile_then_reads_memberships(client: TestClient,
                                                                        database_url: str) -> None:
    thread, outcome = in_background(lambda: client.get("/api/users/carol/segments",
                                                       params={"after": "e-1", "wait": 5}))
    time.sleep(0.2)
    add_membership(database_url, "carol", OTHER)
    write_profile(database_url, purchases("carol", [5]))
    thread.join(10)
    assert outcome["response"].status_code == 200
    assert [s["segmentId"] for s in outcome["response"].json()["segments"]] == [OTHER]


def test_an_event_not_applied_in_time_is_a_202_saying_so(client: TestClient, database_url: str) -> None:
    write_profile(database_url, purchases("dan", [10]))
    started = time.monotonic()
    response = client.get("/api/users/dan/profile", params={"after": "e-9", "wait": 0.3})
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 202
    assert response.json() == {"status": "pending", "detail": "event e-9 is not applied yet after 0.3 s",
                               "userId": "dan"}
    unknown = client.get("/api/users/nobody/segments", params={"after": "e-1", "wait": 0})
    assert unknown.status_code == 202 and unknown.json()["detail"] == "event e-1 is not applied yet after 0.0 s"


def test_after_by_an_alias_waits_for_the_merge_into_its_user(client: TestClient, database_url: str) -> None:
    """The visitor's event is sent, then they sign in: the link is stored before the merged profile is."""
    visitor = purchases("anon-9", [600], anonymous=True, prefix="v")
    write_profile(database_url, purchases("erin", [50]))
    thread, outcome = in_background(lambda: client.get("/api/users/anon-9/profile",
                                                       params={"after": "v-1", "wait": 5}))
    time.sleep(0.2)
    link(database_url, "anon-9", "erin")  # while the read waits
    time.sleep(0.2)
    write_profile(database_url, merge_profiles(purchases("erin", [50]), visitor, "erin"))
    thread.join(10)
    response: httpx.Response = outcome["response"]
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["userId"], body["resolvedFrom"], body["totalSpent"]) == ("erin", "anon-9", 650)
    assert body["aliases"] == ["anon-9"]


@pytest.mark.parametrize(("params", "field"), [
    ({"after": "e-1", "wait": 11}, "wait"),
    ({"after": "e-1", "wait": -1}, "wait"),
    ({"after": "e-1", "wait": "soon"}, "wait"),
    ({"after": ""}, "after"),
    ({"after": "e 1"}, "after"),
])
def test_bad_after_or_wait_is_a_422_naming_it(client: TestClient, params: dict[str, Any], field: str) -> None:
    for path in ("/api/users/u1/profile", "/api/users/u1/segments"):
        response = client.get(path, params=params)
        assert response.status_code == 422
        assert [d["loc"] for d in response.json()["detail"]] == [["query", field]]


def test_the_openapi_document_describes_the_pending_answer(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/users/{user_id}/profile", "/api/users/{user_id}/segments"):
        operation = paths[path]["get"]
        assert operation["responses"]["202"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/EventPending")
        after = next(p for p in operation["parameters"] if p["name"] == "after")
        assert "last 16 events" in after["description"]
