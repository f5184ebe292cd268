"""`DELETE /api/users/{id}` against the real PostgreSQL and broker: the audit row without PII, the personal
data out of the deliveries, the job's forget on its feedback topic, and what is refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from fastapi.testclient import TestClient
from psycopg.rows import dict_row
from pydantic import SecretStr

from server.domain.membership import MembershipChange
from server.domain.pipeline import ForgetRecord, keyed_input
from server.domain.profile import Profile
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app
from server.stores.postgres import Database
from server.stores.postgres_profiles import PostgresProfileStore
from server.stores.topics import REEVALUATIONS, TOPICS

pytestmark = pytest.mark.api

KEYS = {"write": "write-key-3c81e0f4a9b2", "admin": "admin-key-71d0b9e2c6a4"}
ADMIN, WRITE = {"X-API-Key": KEYS["admin"]}, {"X-API-Key": KEYS["write"]}
ANN, ANON, BEN = "ann-4711", "anon-9f2c", "ben-0815"
ANN_EMAIL = "ann.person@example.com"
SEGMENT = str(uuid.uuid4())


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def settings(service_settings: ServiceSettings) -> ServiceSettings:
    inline = ",".join(f"{key}:{scope}" for scope, key in KEYS.items())
    return service_settings.model_copy(update={"api_keys": SecretStr(inline)})


@pytest.fixture
def client(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def seed(settings: ServiceSettings) -> None:
    """ann (with an anonymous id, a membership, campaign and destination deliveries) and ben, as the platform
    leaves them."""
    async def store_side() -> None:
        db = Database(settings.database_conninfo, 2, 2)
        await db.open(5)
        try:
            store = PostgresProfileStore(db)
            await store.put_profiles([Profile(ANN, {"email": ANN_EMAIL}, event_count=3),
                                      Profile(BEN, {"email": "ben@example.com"}, event_count=1)])
            await store.apply_changes([MembershipChange(ANN, SEGMENT, "entered", datetime.now(UTC), 1)])
            assert (await store.link_alias(ANON, ANN, 100)).made
        finally:
            await db.close()

    asyncio.run(store_side())
    campaign, destination = str(uuid.uuid4()), str(uuid.uuid4())
    with psycopg.connect(settings.database_conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO campaigns (id, name, segment_id, subject, body, trigger, status)"
                     " VALUES (%s, 'spring', %s, 'Hi', 'Thanks', 'now', 'COMPLETED')", (campaign, SEGMENT))
        for user, email, status, reason in [
                (ANN, ANN_EMAIL, "failed", f"550 recipient {ANN_EMAIL} refused"), (ANON, None, "skipped", "no email"),
                (BEN, "ben@example.com", "sent", None)]:
            conn.execute("INSERT INTO campaign_deliveries (campaign_id, user_id, email, status, reason)"
                         " VALUES (%s, %s, %s, %s, %s)", (campaign, user, email, status, reason))
        conn.execute("INSERT INTO destinations (id, name, url, events, secret_sealed, secret_hint)"
                     " VALUES (%s, 'hook', 'http://127.0.0.1:9/hook', '{entered,exited}', 'sealed', 'whsec_…')",
                     (destination,))
        for user, status in [(ANN, "delivered"), (ANN, "failed"), (ANN, "pending"), (BEN, "delivered")]:
            body = {"type": "track", "userId": user, "event": "Audience Entered",
                    "context": {"traits": {"email": f"{user}@example.com"}}}
            conn.execute("INSERT INTO destination_deliveries (destination_id, message_id, user_id, segment_id,"
                         " change, segment_version, changed_at, body, status, last_answer)"
                         " VALUES (%s, %s, %s, %s, 'entered', 1, now(), %s, %s, %s)",
                         (destination, str(uuid.uuid4()), user, SEGMENT, json.dumps(body), status,
                          f"ok {user}" if status != "pending" else None))


def rows(settings: ServiceSettings, query: str) -> list[dict[str, Any]]:
    with psycopg.connect(settings.database_conninfo) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query)
        return cur.fetchall()


def feedback(settings: ServiceSettings, quiet_s: float = 1.0) -> list[tuple[bytes | None, Any]]:
    """Every record on the job's feedback topic (read until none came for `quiet_s`)."""
    topic = settings.topic(REEVALUATIONS)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "test-reader",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(TOPICS[REEVALUATIONS])])
    found, last = [], time.monotonic()
    try:
        while time.monotonic() - last < quiet_s:
            message = consumer.poll(0.1)
            if message is not None and not message.error():
                found.append((message.key(), keyed_input(json.loads(message.value() or b"null"))))
                last = time.monotonic()
    finally:
        consumer.close()
    return found


def test_erasing_by_an_anonymous_id_erases_the_person_audits_without_pii_and_tells_the_job(
        client: TestClient, settings: ServiceSettings) -> None:
    seed(settings)
    answer = client.delete(f"/api/users/{ANON}", headers=ADMIN)
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"userId": ANN, "aliases": [ANON], "status": "deleting", "requestedId": ANON,
                             "resolvedFromAlias": True}

    audit = rows(settings, "SELECT * FROM user_deletions")
    assert len(audit) == 1 and audit[0]["user_id_hash"] == sha256(ANN) and audit[0]["aliases"] == 1
    assert audit[0]["requested_by"] == f"key:{sha256(KEYS['admin'])[:12]}"
    assert not any(pii in str(audit[0]) for pii in (ANN, ANON, ANN_EMAIL))

    campaign = {r["user_id"]: r for r in rows(settings, "SELECT * FROM campaign_deliveries")}
    assert set(campaign) == {sha256(ANN), sha256(ANON), BEN}
    assert campaign[sha256(ANN)]["email"] is None and campaign[sha256(ANN)]["status"] == "failed"
    assert campaign[sha256(ANN)]["reason"] == "550 recipient [erased] refused"
    assert campaign[sha256(ANON)]["status"] == "skipped"  # the counts stay as they were
    assert campaign[BEN]["email"] == "ben@example.com"

    deliveries = rows(settings, "SELECT user_id, status, body, last_answer FROM destination_deliveries ORDER BY seq")
    finished = [d for d in deliveries if d["user_id"] == sha256(ANN)]
    assert [d["status"] for d in finished] == ["delivered", "failed"]
    for delivery in finished:
        assert json.loads(delivery["body"])["userId"] == sha256(ANN) and ANN not in delivery["body"]
        assert "traits" not in json.loads(delivery["body"])["context"] and delivery["last_answer"] is None
    pending = [d for d in deliveries if d["status"] == "pending"]
    assert [d["user_id"] for d in pending] == [ANN]  # still to be delivered as it was
    assert [d["user_id"] for d in deliveries if d["status"] == "delivered"][-1] == BEN

    forgets = feedback(settings)
    assert len(forgets) == 1
    key, record = forgets[0]
    assert key == ANN.encode() and isinstance(record, ForgetRecord) and record.user_id == ANN


def test_a_read_write_key_may_not_erase_and_nothing_is_done(client: TestClient, settings: ServiceSettings) -> None:
    seed(settings)
    refused = client.delete(f"/api/users/{ANN}", headers=WRITE)
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    assert client.delete(f"/api/users/{ANN}").status_code == 401
    assert rows(settings, "SELECT * FROM user_deletions") == []
    assert {r["user_id"] for r in rows(settings, "SELECT user_id FROM campaign_deliveries")} == {ANN, ANON, BEN}
    assert feedback(settings, quiet_s=0.5) == []


def test_an_unknown_id_is_a_404_naming_it(client: TestClient, settings: ServiceSettings) -> None:
    missing = client.delete("/api/users/nobody-here", headers=ADMIN)
    assert missing.status_code == 404 and "nobody-here" in missing.json()["detail"]
    assert client.delete("/api/users/bad%20id", headers=ADMIN).status_code == 422
    assert rows(settings, "SELECT * FROM user_deletions") == []


def test_a_user_known_only_by_its_aliases_is_erased(client: TestClient, settings: ServiceSettings) -> None:
    seed(settings)
    with psycopg.connect(settings.database_conninfo, autocommit=True) as conn:
        conn.execute("DELETE FROM user_profiles WHERE user_id = %s", (ANN,))
        conn.execute("DELETE FROM segment_memberships WHERE user_id = %s", (ANN,))
    answer = client.delete(f"/api/users/{ANN}", headers=ADMIN)
    assert answer.status_code == 202 and answer.json()["aliases"] == [ANON]
    assert answer.json()["resolvedFromAlias"] is False


def test_an_unacknowledged_forget_is_a_503_and_leaves_nothing_done(settings: ServiceSettings) -> None:
    seed(settings)
    dead = settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    with TestClient(create_app(dead)) as client:
        refused = client.delete(f"/api/users/{ANN}", headers=ADMIN)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert "kafka unavailable" in refused.json()["detail"]
    assert rows(settings, "SELECT * FROM user_deletions") == []  # a retry starts afresh
    assert {r["user_id"] for r in rows(settings, "SELECT user_id FROM campaign_deliveries")} == {ANN, ANON, BEN}
    assert {r["user_id"] for r in rows(settings, "SELECT user_id FROM destination_deliveries")} == {ANN, BEN}
