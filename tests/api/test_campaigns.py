"""The Communication API and the email worker against real PostgreSQL, broker and an SMTP server."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb

from server.domain.email import EmailJob
from server.email_worker.app import create_app as worker_app
from server.runtime.settings import ServiceSettings
from server.stores.deliveries import ClaimResult, DeliveryEntry, DeliveryLedger, DeliveryStatus
from server.stores.postgres import Database
from server.stores.topics import EMAIL_DEAD_LETTERS, EMAIL_JOBS, SEGMENT_MEMBERSHIP
from tests.api.conftest import Sink

pytestmark = pytest.mark.api


def put_profiles(database_url: str, profiles: dict[str, dict[str, Any]]) -> None:
    """Profiles as the rule engine writes them."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for user, traits in profiles.items():
            conn.execute("INSERT INTO user_profiles (user_id, profile) VALUES (%s, %s)",
                         (user, Jsonb({"userId": user, "traits": traits, "totalSpent": 1500.0, "eventCount": 1})))


def static_segment(segments: TestClient, members: list[str]) -> str:
    created = segments.post("/api/segments", json={"name": f"s-{uuid.uuid4().hex[:8]}", "type": "STATIC"})
    assert created.status_code == 201, created.text
    sid = str(created.json()["id"])
    assert segments.post(f"/api/segments/{sid}/members", json={"add": members}).status_code == 200
    return sid


def campaign(api: TestClient, segment_id: str, schedule: Any = "now", subject: str = "Hello {{ firstName | "
             "default('friend') }}", body: str = "You spent ${{ totalSpent }}.", **fields: Any) -> dict[str, Any]:
    """Create a campaign; `fields` are more of its body by their wire names (frequencyCap=…, quietHours=…)."""
    request = {"name": f"c-{uuid.uuid4().hex[:6]}", "segmentId": segment_id, "channel": "EMAIL", "schedule": schedule,
               "template": {"subject": subject, "body": body}, **fields}
    response = api.post("/api/campaigns", json=request)
    assert response.status_code == 201, response.text
    return dict(response.json())


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def counts(api: TestClient, campaign_id: str) -> dict[str, int]:
    return dict(api.get(f"/api/campaigns/{campaign_id}").json()["counts"])


def test_campaign_mails_each_member_once_and_skips_opt_outs(
        api: TestClient, worker: TestClient, segments: TestClient, sink: Sink, database_url: str) -> None:
    put_profiles(database_url, {
        "ann": {"email": "ann@example.com", "firstName": "Ann"},
        "bob": {"email": "bob@example.com"},
        "cid": {"email": "cid@example.com", "emailOptOut": True},
        "dee": {"firstName": "Dee"},  # no address
    })
    sid = static_segment(segments, ["ann", "bob", "cid", "dee", "eve"])  # eve has no profile at all
    created = campaign(api, sid)
    assert created["status"] == "SCHEDULED" and created["schedule"] == "now"
    cid = created["id"]
    eventually(lambda: counts(api, cid)["sent"] == 2, "two mails sent")
    body = api.get(f"/api/campaigns/{cid}").json()
    assert body["status"] == "COMPLETED" and body["audienceSize"] == 5 and body["completedAt"]
    assert body["counts"] == {"queued": 0, "sent": 2, "failed": 0, "skipped": 3, "deferred": 0, "cancelled": 0}
    mails = sink.mails(cid)
    assert sorted((m.rcpt_to[0], m.subject) for m in mails) == [
        ("ann@example.com", "Hello Ann"), ("bob@example.com", "Hello friend")]
    assert all(m.body.strip() == "You spent $1500.0." for m in mails)
    skipped = api.get(f"/api/campaigns/{cid}/deliveries", params={"status": "skipped"}).json()["items"]
    assert {d["userId"]: d["reason"].split(" (")[0] for d in skipped} == {
        "cid": "opted out", "dee": "no email address", "eve": "no email address"}
    metrics = worker.get("/metrics").text
    assert 'am_emails_total{outcome="sent"} 2.0' in metrics
    assert 'am_campaign_jobs_queued_total{trigger="now"} 2.0' in api.get("/metrics").text


def test_a_replayed_job_is_not_sent_again(api: TestClient, worker: TestClient, segments: TestClient, sink: Sink,
                                          database_url: str, settings: ServiceSettings) -> None:
    put_profiles(database_url, {"ann": {"email": "ann@example.com"}})
    cid = campaign(api, static_segment(segments, ["ann"]))["id"]
    eventually(lambda: counts(api, cid)["sent"] == 1, "the mail sent")
    job = EmailJob(cid, "ann", "ann@example.com", "again", "again", datetime.now(UTC))
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for _ in range(3):  # a replay after a crash or rebalance, or a duplicate publish
        producer.produce(settings.topic(EMAIL_JOBS), key="ann", value=json.dumps(job.to_json()))
    producer.flush(5)
    eventually(lambda: 'am_emails_total{outcome="done"} 3.0' in worker.get("/metrics").text, "replays handled")
    assert len(sink.mails(cid)) == 1 and counts(api, cid)["sent"] == 1


def test_smtp_outage_is_retried_and_a_permanent_refusal_dead_lettered(
        api: TestClient, segments: TestClient, sink: Sink, database_url: str, settings: ServiceSettings) -> None:
    put_profiles(database_url, {"ann": {"email": "ann@example.com"}, "bad": {"email": "nobody@bounce.example"}})
    sid = static_segment(segments, ["ann", "bad"])
    sink.stop()  # the SMTP server is down when the jobs arrive
    with TestClient(worker_app(settings)) as worker:
        cid = campaign(api, sid)["id"]
        eventually(lambda: 'am_emails_total{outcome="retried"}' in worker.get("/metrics").text, "a retry")
        sink.start()
        eventually(lambda: counts(api, cid)["sent"] == 1 and counts(api, cid)["failed"] == 1, "both outcomes")
    failed = api.get(f"/api/campaigns/{cid}/deliveries", params={"status": "failed"}).json()["items"]
    assert [d["userId"] for d in failed] == ["bad"] and "550" in failed[0]["reason"]
    sent = api.get(f"/api/campaigns/{cid}/deliveries", params={"status": "sent"}).json()["items"]
    assert sent[0]["attempts"] >= 2  # it did fail while the server was down
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "dlq-reader"})
    consumer.assign([TopicPartition(settings.topic(EMAIL_DEAD_LETTERS), 0, 0)])
    message = consumer.poll(10)
    consumer.close()
    assert message is not None and "550" in json.loads(message.value())["reason"]


def test_on_enter_campaign_mails_each_entering_user_once(
        api: TestClient, worker: TestClient, segments: TestClient, sink: Sink, database_url: str,
        settings: ServiceSettings) -> None:
    created = segments.post("/api/segments", json={
        "name": f"vip-{uuid.uuid4().hex[:6]}", "rules": {"field": "totalSpent", "operator": "gt", "value": 1000}})
    sid = created.json()["id"]
    before = datetime.now(UTC) - timedelta(minutes=5)
    cid = campaign(api, sid, schedule="on_enter", subject="Welcome {{ firstName }}")["id"]
    assert api.get(f"/api/campaigns/{cid}").json()["status"] == "ACTIVE"
    put_profiles(database_url, {"old": {"email": "old@example.com"}})

    def entered(user: str, at: datetime, profile: bool = True) -> str:
        record: dict[str, Any] = {"userId": user, "segmentId": sid, "change": "entered",
                                  "at": at.isoformat(), "segmentVersion": 1}
        if profile:  # the rule engine sends the profile with the change
            record["profile"] = {"userId": user, "traits": {"email": f"{user}@example.com", "firstName": user}}
        return json.dumps(record)

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    topic = settings.topic(SEGMENT_MEMBERSHIP)
    now = datetime.now(UTC)
    # records that cannot be read come first: each is skipped and counted, and the trigger goes on
    unreadable = ("not json", entered("new", now).replace('"new"', '"n\\ud800w"'), '{"probe": 1}')
    for value in (*unreadable, '{"probe": "a-token"}',  # the rule engine's probe echo: not for this consumer
                  entered("new", now), entered("new", now),  # a replayed change
                  entered("old", before, profile=False),  # entered before the campaign began
                  entered("late", now, profile=False)):  # no profile in the record nor in the store
        producer.produce(topic, value=value)
    producer.produce(topic, value=json.dumps({"userId": "x", "segmentId": sid, "change": "exited",
                                              "at": now.isoformat(), "segmentVersion": 1}))
    producer.flush(5)
    eventually(lambda: counts(api, cid)["sent"] == 1 and counts(api, cid)["skipped"] == 1, "one welcome mail")
    mails = sink.mails(cid)
    assert [(m.rcpt_to, m.subject) for m in mails] == [(["new@example.com"], "Welcome new")]
    rejected = [line for line in api.get("/metrics").text.splitlines()
                if line.startswith("am_on_enter_records_rejected_total ")]
    assert rejected == [f"am_on_enter_records_rejected_total {len(unreadable)}.0"]


def test_cancel_stops_a_scheduled_campaign(api: TestClient, segments: TestClient) -> None:
    sid = static_segment(segments, ["ann"])
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    created = campaign(api, sid, schedule={"at": later})
    assert created["schedule"] == "at" and created["status"] == "SCHEDULED"
    cancelled = api.post(f"/api/campaigns/{created['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    assert api.post(f"/api/campaigns/{created['id']}/cancel").status_code == 409
    listed = api.get("/api/campaigns", params={"status": "CANCELLED"}).json()
    assert [c["id"] for c in listed["items"]] == [created["id"]] and listed["total"] == 1


def test_bad_campaigns_are_refused_with_the_reason(api: TestClient, segments: TestClient) -> None:
    sid = static_segment(segments, ["ann"])

    def create(**changes: Any) -> Any:
        body = {"name": "c", "segmentId": sid, "template": {"subject": "s", "body": "b"}, **changes}
        return api.post("/api/campaigns", json=body)

    unknown = create(segmentId=str(uuid.uuid4()))
    assert unknown.status_code == 404 and "no segment" in unknown.json()["detail"]
    broken = create(template={"subject": "s", "body": "{% for x in %}"})
    assert broken.status_code == 422 and broken.json()["detail"][0]["loc"] == ["body", "template", "body"]
    escape = create(template={"subject": "{{ ''.__class__.__mro__[1].__subclasses__() }}", "body": "b"})
    assert escape.status_code == 422 and escape.json()["detail"][0]["loc"] == ["body", "template", "subject"]
    huge = create(template={"subject": "s", "body": "{{ 'x' * 100000000 }}"})
    assert huge.status_code == 422 and "exceed" in huge.json()["detail"][0]["msg"]
    past = create(schedule={"at": "2020-01-01T00:00:00Z"})
    assert past.status_code == 422 and past.json()["detail"][0]["loc"] == ["body", "schedule", "at"]
    assert create(channel="SMS").status_code == 422
    assert api.get(f"/api/campaigns/{uuid.uuid4()}").status_code == 404
    assert api.get("/api/campaigns/not-a-uuid").status_code == 404


def test_a_delivery_interrupted_mid_send_is_failed_in_doubt_not_resent(
        api: TestClient, segments: TestClient, database_url: str) -> None:
    """A worker that died after claiming leaves the row `sending`; the sweep fails it and no one resends."""
    sid = static_segment(segments, ["ann"])
    cid = campaign(api, sid, schedule={"at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})["id"]

    async def scenario() -> tuple[list[str], str, str]:
        db = Database(database_url, 2, 2.0)
        await db.open(5)
        try:
            ledger = DeliveryLedger(db)
            queued = await ledger.record(cid, [DeliveryEntry("ann", "ann@example.com", DeliveryStatus.QUEUED)])
            job = EmailJob(cid, "ann", "ann@example.com", "s", "b", datetime.now(UTC))
            first = await ledger.claim(job)  # ...and the worker dies here
            assert first.result is ClaimResult.SEND and first.attempts == 1
            while_claimed = (await ledger.claim(job)).result
            assert await ledger.expire_stale_claims(lease_s=0) == 1
            after = (await ledger.claim(job)).result
            again = await ledger.record(cid, [DeliveryEntry("ann", "ann@example.com", DeliveryStatus.QUEUED)])
            assert again == []  # a recorded recipient is never queued a second time
            return queued, while_claimed.value, after.value
        finally:
            await db.close()

    assert asyncio.run(scenario()) == (["ann"], "busy", "done")
    failed = api.get(f"/api/campaigns/{cid}/deliveries").json()["items"]
    assert failed[0]["status"] == "failed" and failed[0]["reason"].startswith("in doubt")
