"""The Segment API over HTTP, against the real PostgreSQL and broker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from server.domain.events import UserEvent
from server.domain.profile import apply_event
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app

pytestmark = pytest.mark.api

SEED = {"name": "High Value Users", "description": "Users who spent more than $1000", "type": "DYNAMIC",
        "rules": {"conditions": [{"field": "totalSpent", "operator": "gt", "value": 1000}]}}


@pytest.fixture
def client(service_settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as c:
        yield c


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 10.0) -> list[tuple[str, Any]]:
    """Every record of a one-partition topic from offset 0 (assign: no slow group join)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    records: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            value = msg.value()
            records.append((msg.key().decode(), json.loads(value) if value is not None else None))
    finally:
        consumer.close()
    return records


def test_seed_curl_creates_a_segment(client: TestClient) -> None:
    response = client.post("/api/segments", json=SEED)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "High Value Users" and body["version"] == 1 and body["type"] == "DYNAMIC"
    assert body["createdAt"] and body["updatedAt"] and body["id"]
    assert body["rules"] == SEED["rules"] and body["warnings"] == []
    assert response.headers["ETag"] == 'W/"1"'
    assert client.get(f"/api/segments/{body['id']}").json()["name"] == "High Value Users"


def test_bad_operator_is_a_422_naming_it(client: TestClient) -> None:
    bad = {**SEED, "rules": {"conditions": [{"field": "totalSpent", "operator": "gtt", "value": 1000}]}}
    response = client.post("/api/segments", json=bad)
    assert response.status_code == 422
    messages = [d["msg"] for d in response.json()["detail"]]
    assert messages == ["rules.conditions[0].operator: unknown operator 'gtt'"]
    assert response.json()["detail"][0]["loc"] == ["body", "rules", "conditions", 0, "operator"]


def test_duplicate_name_is_a_409(client: TestClient) -> None:
    assert client.post("/api/segments", json=SEED).status_code == 201
    again = client.post("/api/segments", json={**SEED, "name": "high value users"})
    assert again.status_code == 409
    assert "already exists" in again.json()["detail"]


def test_contradictory_rules_are_accepted_with_a_warning(client: TestClient) -> None:
    rules = {"all": [{"field": "age", "operator": "gt", "value": 50}, {"field": "age", "operator": "lt", "value": 20}]}
    response = client.post("/api/segments", json={**SEED, "rules": rules})
    assert response.status_code == 201
    assert any("contradictory" in w for w in response.json()["warnings"])


def test_list_filters_and_pages(client: TestClient) -> None:
    for i in range(3):
        client.post("/api/segments", json={**SEED, "name": f"dyn {i}"})
    client.post("/api/segments", json={"name": "vips", "type": "STATIC"})
    page = client.get("/api/segments", params={"type": "DYNAMIC", "limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2
    rest = client.get("/api/segments", params={"type": "DYNAMIC", "limit": 2, "offset": 2}).json()
    assert [s["name"] for s in rest["items"]] == ["dyn 2"]
    assert client.get("/api/segments", params={"type": "STATIC"}).json()["total"] == 1
    assert client.get("/api/segments", params={"status": "PAUSED"}).json()["total"] == 0


def test_update_bumps_version_with_optimistic_concurrency(client: TestClient) -> None:
    created = client.post("/api/segments", json=SEED).json()
    url = f"/api/segments/{created['id']}"
    updated = client.put(url, json={"description": "new"}, headers={"If-Match": 'W/"1"'})
    assert updated.status_code == 200 and updated.json()["version"] == 2
    stale = client.put(url, json={"description": "lost update"}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    stale_body = client.put(url, json={"description": "lost update", "version": 1})
    assert stale_body.status_code == 409 and "version 2" in stale_body.json()["detail"]
    bad_rules = client.put(url, json={"rules": {"conditions": [{"field": "x", "operator": "lt", "value": "a"}]}})
    assert bad_rules.status_code == 422
    assert client.get(url).json()["description"] == "new"


def test_delete_then_404(client: TestClient) -> None:
    created = client.post("/api/segments", json=SEED).json()
    assert client.delete(f"/api/segments/{created['id']}").status_code == 204
    assert client.get(f"/api/segments/{created['id']}").status_code == 404
    assert client.delete(f"/api/segments/{created['id']}").status_code == 404
    assert client.get("/api/segments/not-a-uuid").status_code == 404
    assert client.post("/api/segments", json=SEED).status_code == 201  # the name is free again


def test_changes_are_published_in_order_with_tombstones(client: TestClient, service_settings: ServiceSettings) -> None:
    created = client.post("/api/segments", json=SEED).json()
    sid = created["id"]
    client.put(f"/api/segments/{sid}", json={"status": "PAUSED"})
    client.delete(f"/api/segments/{sid}")
    records = read_topic(service_settings.kafka_bootstrap, service_settings.topic("segment-rules"), 3)
    assert [key for key, _ in records] == [sid, sid, sid]
    assert records[0][1]["version"] == 1 and records[0][1]["rules"] == SEED["rules"]
    assert records[1][1]["version"] == 2 and records[1][1]["status"] == "PAUSED"
    assert records[2][1] is None


def test_outbox_survives_a_broker_outage(service_settings: ServiceSettings) -> None:
    dead = service_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    with TestClient(create_app(dead)) as client:
        sid = client.post("/api/segments", json=SEED).json()["id"]
        assert client.put(f"/api/segments/{sid}", json={"description": "v2"}).status_code == 200
        other = client.post("/api/segments", json={**SEED, "name": "other"}).json()["id"]
        assert client.delete(f"/api/segments/{other}").status_code == 204
        health = client.get("/actuator/health").json()
        assert health["components"]["outbox"]["details"]["pending"] == 4
    with TestClient(create_app(service_settings)):  # the broker is back: the outbox drains in order
        records = read_topic(service_settings.kafka_bootstrap, service_settings.topic("segment-rules"), 4 + 1)
    assert [(k, v["version"] if v else None) for k, v in records[:4]] == [(sid, 1), (sid, 2), (other, 1), (other, None)]
    assert records[4] == (sid, records[1][1])  # then the start-up snapshot of the live segment


def add_profiles(database_url: str, *profiles: dict[str, Any]) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for p in profiles:
            conn.execute("INSERT INTO user_profiles (user_id, profile) VALUES (%s, %s)", (p["userId"], Jsonb(p)))


def spender(user: str, amount: float, **traits: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    event = UserEvent(user_id=user, event_type="purchase", event_id=user, timestamp=now,
                      properties={"amount": amount, **traits})
    return apply_event(None, event, timedelta(0)).to_json()


def test_preview_counts_current_profiles(client: TestClient, database_url: str) -> None:
    add_profiles(database_url, *[spender(f"u{i:04d}", 500 * i) for i in range(2500)], spender("x", 5, country="DE"))
    response = client.post("/api/segments/preview", json={"rules": SEED["rules"], "sampleSize": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["scanned"] == 2501 and body["matching"] == 2500 - 3  # u0000..u0002 spent at most 1000
    assert body["sample"] == ["u0003", "u0004", "u0005"]
    de = client.post("/api/segments/preview", json={"rules": {"field": "country", "operator": "eq", "value": "DE"}})
    assert de.json()["matching"] == 1
    assert client.post("/api/segments/preview", json={"rules": {"bad": 1}}).status_code == 422


def shopper(user: str, *purchases: tuple[int, dict[str, Any]]) -> dict[str, Any]:
    """A stored profile from purchases (days ago, properties), with their history as the rule job keeps it."""
    now, profile = datetime.now(UTC), None
    for i, (days, properties) in enumerate(purchases):
        event = UserEvent(user_id=user, event_type="purchase", event_id=f"{user}-{i}",
                          timestamp=now - timedelta(days=days), properties=properties)
        profile = apply_event(profile, event, timedelta(days=30), now)
    assert profile is not None
    return profile.to_json()


def test_preview_evaluates_filters_aggregates_and_windows_on_the_stored_history(client: TestClient,
                                                                                 database_url: str) -> None:
    add_profiles(database_url,
                 shopper("twice", (20, {"category": "shoes", "amount": 80}), (3, {"category": "shoes", "amount": 150})),
                 shopper("once", (2, {"category": "shoes", "amount": 500}), (1, {"category": "books", "amount": 5})),
                 shopper("lapsed", (25, {"category": "shoes", "amount": 40}), (24, {"category": "shoes", "amount": 9})))

    def matching(rules: dict[str, Any]) -> list[str]:
        response = client.post("/api/segments/preview", json={"rules": rules, "sampleSize": 10})
        assert response.status_code == 200, response.text
        return sorted(response.json()["sample"])

    shoes = {"field": "category", "operator": "eq", "value": "shoes"}
    assert matching({"event": "purchase", "where": shoes, "count": {"gte": 2}, "within": "P30D"}) == ["lapsed",
                                                                                                     "twice"]
    assert matching({"event": "purchase", "where": shoes, "count": {"gte": 2}, "within": "P7D"}) == []
    assert matching({"event": "purchase", "avg": {"field": "amount", "gte": 100}}) == ["once", "twice"]
    assert matching({"event": "purchase", "count": {"gte": 2}, "between": ["P30D", "P7D"]}) == ["lapsed"]
    assert matching({"event": "purchase", "last": {"before": "-P7D"}}) == ["lapsed"]
    bad = client.post("/api/segments/preview", json={"rules": {"event": "purchase", "avg": {"gte": "x"}}})
    assert bad.status_code == 422 and "rules.avg.gte" in bad.text


def test_static_members_stats_and_user_views(client: TestClient, database_url: str) -> None:
    add_profiles(database_url, spender("alice", 10, plan="pro"))
    static = client.post("/api/segments", json={"name": "beta testers", "type": "STATIC"}).json()
    sid = static["id"]
    stats = client.post(f"/api/segments/{sid}/members", json={"add": ["alice", "bob", "carol"]}).json()
    assert stats["size"] == 3 and stats["entered"]["lastHour"] == 3
    stats = client.post(f"/api/segments/{sid}/members", json={"remove": ["bob"], "add": ["alice"]}).json()
    assert stats["size"] == 2 and stats["exited"]["lastDay"] == 1  # re-adding alice changes nothing
    first = client.get(f"/api/segments/{sid}/members", params={"limit": 1}).json()
    assert [m["userId"] for m in first["items"]] == ["alice"] and first["nextCursor"] == "alice"
    second = client.get(f"/api/segments/{sid}/members", params={"limit": 1, "cursor": "alice"}).json()
    assert [m["userId"] for m in second["items"]] == ["carol"]
    mine = client.get("/api/users/alice/segments").json()
    assert mine["segments"][0]["segmentId"] == sid and mine["segments"][0]["name"] == "beta testers"
    assert mine["segments"][0]["enteredAt"]
    profile = client.get("/api/users/alice/profile").json()
    assert profile["totalSpent"] == 10 and profile["traits"] == {"plan": "pro"} and "history" not in profile
    assert client.get("/api/users/nobody/profile").status_code == 404
    assert client.get("/api/users/nobody/segments").json()["segments"] == []
    dynamic = client.post("/api/segments", json=SEED).json()
    assert client.post(f"/api/segments/{dynamic['id']}/members", json={"add": ["x"]}).status_code == 422
    assert client.delete(f"/api/segments/{sid}").status_code == 204
    assert client.get("/api/users/alice/segments").json()["segments"] == []


def test_static_with_rules_and_dynamic_without_are_rejected(client: TestClient) -> None:
    assert client.post("/api/segments", json={**SEED, "type": "STATIC"}).status_code == 422
    no_rules = client.post("/api/segments", json={"name": "x", "type": "DYNAMIC"})
    assert no_rules.status_code == 422 and "required" in no_rules.json()["detail"][0]["msg"]
