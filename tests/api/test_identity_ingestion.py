"""Identity at the Ingestion API, against the real broker and PostgreSQL: anonymous events, identify,
the links events imply, and where the events of a linked anonymous id go."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from server.domain.events import UserEvent
from server.domain.pipeline import MAX_ALIASES, IdentifyRecord, keyed_input
from server.ingestion_api.app import create_app
from server.runtime.settings import ServiceSettings
from server.stores.postgres import Database
from server.stores.postgres_profiles import PostgresProfileStore
from server.stores.topics import USER_EVENTS
from tests.api.test_ingestion import consume_all

pytestmark = pytest.mark.api


@pytest.fixture
def client(service_settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as c:
        yield c


def records(settings: ServiceSettings, expected: int) -> list[tuple[str, Any]]:
    """(key, record) for what is on `user-events`, each read as the rule job reads it."""
    return [(r.pop("key"), keyed_input(r)) for r in consume_all(settings.kafka_bootstrap,
                                                                settings.topic(USER_EVENTS), expected)]


def link_in_store(settings: ServiceSettings, anonymous_id: str, user_id: str) -> str:
    async def link() -> str:
        db = Database(settings.database_conninfo, 2, 2)
        await db.open(5)
        try:
            return (await PostgresProfileStore(db).link_alias(anonymous_id, user_id, MAX_ALIASES)).status
        finally:
            await db.close()

    return asyncio.run(link())


def test_an_anonymous_event_is_keyed_by_its_anonymous_id(client: TestClient, service_settings: ServiceSettings) -> None:
    response = client.post("/api/events", json={"anonymousId": "anon-1", "eventType": "page_view"})
    assert response.status_code == 202, response.text
    assert response.json()["anonymousId"] == "anon-1" and response.json()["userId"] is None
    [(key, event)] = records(service_settings, 1)
    assert key == "anon-1" and isinstance(event, UserEvent)
    assert event.anonymous and event.user_id == "anon-1" and event.anonymous_id == "anon-1"


@pytest.mark.parametrize("body", [{"eventType": "x"}, {"userId": None, "anonymousId": None, "eventType": "x"}])
def test_an_event_without_either_id_is_422_naming_user_id(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/api/events", json=body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "userId"] and error["msg"] == "userId or anonymousId is required"
    batch = client.post("/api/events/batch", json={"events": [body, {"anonymousId": "a", "eventType": "x"}]})
    assert batch.status_code == 207
    assert batch.json()["results"][0]["errors"] == ["userId: userId or anonymousId is required"]
    assert batch.json()["results"][1]["status"] == "accepted"


def test_anonymous_id_has_the_user_id_charset(client: TestClient) -> None:
    response = client.post("/api/events", json={"anonymousId": "has space", "eventType": "x"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "anonymousId"]


def test_event_types_may_have_inner_spaces_like_segment_names(client: TestClient) -> None:
    assert client.post("/api/events", json={"userId": "u", "eventType": "Order Completed"}).status_code == 202
    for bad in (" Order", "Order ", "Order  Completed"):
        assert client.post("/api/events", json={"userId": "u", "eventType": bad}).status_code == 422


def test_identify_links_and_tells_the_rule_job_after_the_ack(client: TestClient,
                                                             service_settings: ServiceSettings) -> None:
    body = {"userId": "u-1", "anonymousId": "anon-42", "traits": {"plan": "pro"}}
    first = client.post("/api/identify", json=body)
    assert first.status_code == 202, first.text
    assert first.json() == {"userId": "u-1", "anonymousId": "anon-42", "status": "linked"}
    again = client.post("/api/identify", json=body)
    assert again.status_code == 202 and again.json()["status"] == "already linked"
    got = records(service_settings, 2)
    assert [key for key, _ in got] == ["anon-42", "anon-42"]  # on the anonymous id's partition, after its events
    for _, record in got:  # a repeat is produced again: the job ignores an identify it applied, so it is safe
        assert isinstance(record, IdentifyRecord)
        assert (record.anonymous_id, record.user_id, record.traits) == ("anon-42", "u-1", {"plan": "pro"})


@pytest.mark.parametrize(("body", "field"), [
    ({"userId": "same", "anonymousId": "same"}, "anonymousId"),
    ({"userId": "u"}, "anonymousId"),
    ({"anonymousId": "a"}, "userId"),
    ({"userId": "u", "anonymousId": "bad id"}, "anonymousId"),
    ({"userId": "u", "anonymousId": "a", "traits": [1]}, "traits"),
    ({"userId": "u", "anonymousId": "a", "extra": 1}, "extra"),
])
def test_identify_with_bad_fields_is_422_naming_them(client: TestClient, body: dict[str, Any], field: str) -> None:
    response = client.post("/api/identify", json=body)
    assert response.status_code == 422
    assert field in [str(part) for d in response.json()["detail"] for part in d["loc"]]


def test_identify_refusals_are_409_saying_why_and_produce_nothing(client: TestClient,
                                                                  service_settings: ServiceSettings) -> None:
    assert client.post("/api/identify", json={"userId": "u-1", "anonymousId": "anon-42"}).status_code == 202
    conflict = client.post("/api/identify", json={"userId": "u-2", "anonymousId": "anon-42"})
    assert conflict.status_code == 409
    assert conflict.json()["detail"] == "anonymousId 'anon-42' is already linked to another user, 'u-1'"
    assert client.post("/api/events", json={"userId": "known", "eventType": "x"}).status_code == 202
    link_in_store(service_settings, "anon-of-known", "known")  # "known" is a user with an alias now
    known = client.post("/api/identify", json={"userId": "u-3", "anonymousId": "known"})
    assert known.status_code == 409 and "two known users are never merged" in known.json()["detail"]
    alias_user = client.post("/api/identify", json={"userId": "anon-42", "anonymousId": "anon-7"})
    assert alias_user.status_code == 409
    assert alias_user.json()["detail"] == ("userId 'anon-42' is an anonymous id linked to user 'u-1': "
                                           "identify with that user")
    metrics = client.get("/metrics").text
    assert 'am_identity_refusals_total{reason="conflict"} 1.0' in metrics
    assert 'am_identity_refusals_total{reason="known_user"} 1.0' in metrics
    got = records(service_settings, 2)
    assert sorted(type(r).__name__ for _, r in got) == ["IdentifyRecord", "UserEvent"]  # none for a refusal


def test_identify_stops_at_the_alias_limit(client: TestClient) -> None:
    for i in range(MAX_ALIASES):
        assert client.post("/api/identify", json={"userId": "busy", "anonymousId": f"a{i}"}).status_code == 202
    over = client.post("/api/identify", json={"userId": "busy", "anonymousId": "one-more"})
    assert over.status_code == 409 and f"already has {MAX_ALIASES} anonymous ids" in over.json()["detail"]


def test_an_event_with_both_ids_is_keyed_by_the_user_and_links_them(client: TestClient,
                                                                    service_settings: ServiceSettings) -> None:
    body = {"userId": "u-1", "anonymousId": "anon-9", "eventType": "signup"}
    first = client.post("/api/events", json=body)
    assert first.status_code == 202, first.text
    assert first.json()["identity"] == {"status": "linked", "detail": None}
    second = client.post("/api/events", json=body)
    assert second.json()["identity"]["status"] == "already linked"  # known to the process: no store query
    got = records(service_settings, 3)
    events = [(k, r) for k, r in got if isinstance(r, UserEvent)]
    identifies = [(k, r) for k, r in got if isinstance(r, IdentifyRecord)]
    assert [k for k, _ in events] == ["u-1", "u-1"] and all(r.anonymous_id == "anon-9" for _, r in events)
    assert [(k, r.user_id) for k, r in identifies] == [("anon-9", "u-1")]  # once: the second was cached


def test_a_refused_implied_link_still_takes_the_event(client: TestClient, service_settings: ServiceSettings) -> None:
    assert client.post("/api/identify", json={"userId": "u-1", "anonymousId": "anon-5"}).status_code == 202
    response = client.post("/api/events", json={"userId": "u-2", "anonymousId": "anon-5", "eventType": "x"})
    assert response.status_code == 202 and response.json()["status"] == "accepted"
    identity = response.json()["identity"]
    assert identity["status"] == "not linked" and identity["detail"].endswith("nothing is merged")
    assert "already linked to another user, 'u-1'" in identity["detail"]
    assert 'am_identity_refusals_total{reason="conflict"} 1.0' in client.get("/metrics").text
    got = records(service_settings, 2)
    assert sorted((k, type(r).__name__) for k, r in got) == [("anon-5", "IdentifyRecord"), ("u-2", "UserEvent")]


def test_events_of_a_linked_anonymous_id_go_to_its_user(service_settings: ServiceSettings) -> None:
    link_in_store(service_settings, "anon-linked", "u-1")  # linked by another replica: this one looks it up
    with TestClient(create_app(service_settings)) as client:
        batch = client.post("/api/events/batch", json={"events": [
            {"anonymousId": "anon-linked", "eventType": "page_view", "eventId": "e1"},
            {"anonymousId": "anon-new", "eventType": "page_view", "eventId": "e2"},
            {"userId": "u-9", "eventType": "page_view", "eventId": "e3"},
        ]})
        assert batch.status_code == 202, batch.text
        single = client.post("/api/events", json={"anonymousId": "anon-linked", "eventType": "click", "eventId": "e4"})
        assert single.status_code == 202
    got = {r.event_id: (k, r) for k, r in records(service_settings, 4)}
    key, routed = got["e1"]
    assert key == "u-1" and routed.user_id == "u-1" and not routed.anonymous and routed.anonymous_id == "anon-linked"
    assert got["e4"][0] == "u-1"
    key, unknown = got["e2"]
    assert key == "anon-new" and unknown.anonymous  # the rule job forwards it should a link come later
    assert got["e3"][0] == "u-9"


def test_a_store_outage_still_takes_events(service_settings: ServiceSettings) -> None:
    with TestClient(create_app(service_settings)) as client:
        refuse_connections(service_settings.database_url)
        anonymous = client.post("/api/events", json={"anonymousId": "anon-x", "eventType": "x"})
        assert anonymous.status_code == 202
        both = client.post("/api/events", json={"userId": "u", "anonymousId": "anon-y", "eventType": "x"})
        assert both.status_code == 202 and both.json()["identity"]["status"] == "not linked"
        assert "did not answer" in both.json()["identity"]["detail"]
        assert client.post("/api/identify", json={"userId": "u", "anonymousId": "anon-y"}).status_code == 503
        assert 'am_identity_refusals_total{reason="unavailable"} 1.0' in client.get("/metrics").text
    got = records(service_settings, 2)
    assert sorted(k for k, _ in got) == ["anon-x", "u"]


def refuse_connections(database_url: str) -> None:
    """PostgreSQL stops taking connections to the test's database and drops those it has."""
    name = conninfo_to_dict(database_url)["dbname"]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
