"""The delivery worker against the real PostgreSQL and broker, calling real local HTTP servers.

Destinations are rows in `destinations` (as the Communication API writes them), their secrets sealed
with the worker's key; changes are records on the test's own `segment-membership` topic.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr
from standardwebhooks import Webhook, WebhookVerificationError

from server.delivery_worker.app import create_app as delivery_app
from server.domain.membership import Change, MembershipChange
from server.domain.pipeline import MembershipOutput, ProbeEcho, ProfileRemoved
from server.domain.profile import Profile
from server.domain.webhooks import message_id
from server.runtime.secrets import SecretBox, new_key, new_signing_secret, secret_hint
from server.runtime.settings import ServiceSettings
from server.stores.topics import SEGMENT_MEMBERSHIP
from tests.receivers import Received, Receiver, Reply, running_receiver

pytestmark = pytest.mark.api


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as receiver:
        yield receiver


@pytest.fixture
def secrets_key() -> str:
    return new_key()


@pytest.fixture
def box(secrets_key: str) -> SecretBox:
    return SecretBox(secrets_key)


@pytest.fixture
def settings(service_settings: ServiceSettings, secrets_key: str) -> ServiceSettings:
    return service_settings.model_copy(update={
        "secrets_key": SecretStr(secrets_key), "destination_block_private": False, "destination_timeout_s": 1.0,
        "destination_retry_base_s": 0.1, "destination_retry_max_s": 0.4, "destination_pause_after": 1000})


@pytest.fixture
def worker(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(delivery_app(settings)) as client:
        yield client


@dataclass(frozen=True)
class Hook:
    id: str
    secret: str


def add_destination(database_url: str, box: SecretBox, url: str, *, segment_ids: Sequence[str] | None = None,
                    events: Sequence[str] = ("entered", "exited"), headers: dict[str, str] | None = None,
                    previous_secret: str | None = None, previous_expires_at: datetime | None = None) -> Hook:
    """A destination row as the Communication API stores it."""
    hook = Hook(str(uuid.uuid4()), new_signing_secret())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO destinations (id, name, url, segment_ids, events, header_names, headers_sealed,"
            " secret_sealed, secret_hint, previous_secret_sealed, previous_secret_expires_at)"
            " VALUES (%s, %s, %s, %s::uuid[], %s, %s, %s, %s, %s, %s, %s)",
            (hook.id, f"hook-{hook.id[:8]}", url, segment_ids, list(events), sorted(headers or {}),
             box.seal(json.dumps(headers)) if headers else None, box.seal(hook.secret), secret_hint(hook.secret),
             box.seal(previous_secret) if previous_secret else None, previous_expires_at))
    return hook


def add_segment(database_url: str, name: str) -> str:
    segment_id = str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO segments (id, name, type) VALUES (%s, %s, 'DYNAMIC')", (segment_id, name))
    return segment_id


def changes_for(users: Sequence[str], per_user: int, segment_id: str,
                emails: dict[str, str] | None = None) -> list[MembershipOutput]:
    """`per_user` changes for each user, entering and leaving in turn, interleaved across users."""
    start, outputs = datetime.now(UTC), []
    for n in range(per_user):
        for user in users:
            change: Change = "entered" if n % 2 == 0 else "exited"
            at = start + timedelta(milliseconds=len(outputs))
            email = (emails or {}).get(user)
            outputs.append(MembershipOutput(MembershipChange(user, segment_id, change, at, 1, event_received_at=at),
                                            Profile(user, {"email": email}) if email else None))
    return outputs


def produce(settings: ServiceSettings, outputs: Sequence[MembershipOutput]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
    for output in outputs:
        producer.produce(settings.topic(SEGMENT_MEMBERSHIP), key=output.change.user_id,
                         value=json.dumps(output.to_json()))
    assert producer.flush(10) == 0


def ids(hook: Hook, outputs: Sequence[MembershipOutput]) -> list[str]:
    return [message_id(hook.id, output.change) for output in outputs]


def deliveries(database_url: str, hook: Hook) -> list[dict[str, Any]]:
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT message_id::text, user_id, status, attempts, last_status_code, last_answer, last_error,"
                    " next_attempt_at FROM destination_deliveries WHERE destination_id = %s ORDER BY seq", (hook.id,))
        return cur.fetchall()


def destination_row(database_url: str, hook: Hook) -> dict[str, Any]:
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT status, paused_reason, consecutive_failures, last_error, last_delivery_at"
                    " FROM destinations WHERE id = %s", (hook.id,))
        row = cur.fetchone()
    assert row is not None
    return row


def statuses(database_url: str, hook: Hook) -> list[str]:
    return [row["status"] for row in deliveries(database_url, hook)]


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def in_order_per_user(requests: Sequence[Received], outputs: Sequence[MembershipOutput], hook: Hook) -> None:
    """Each user's changes were called in the order they happened, each only once the one before was delivered."""
    for user in {output.change.user_id for output in outputs}:
        expected = ids(hook, [output for output in outputs if output.change.user_id == user])
        calls = [r for r in requests if json.loads(r.body)["userId"] == user]
        first_call = [next(i for i, r in enumerate(calls) if r.id == mid) for mid in expected]
        assert first_call == sorted(first_call), f"{user}'s changes were called out of order"
        for earlier, later in itertools.pairwise(expected):
            accepted = max(i for i, r in enumerate(calls) if r.id == earlier)
            assert calls[accepted].reply.status == 200
            assert all(r.id != later for r in calls[:accepted + 1]), f"{user}: {later} called before {earlier}"


def test_a_destination_down_for_seconds_gets_every_change_in_order_once_it_is_back(
        worker: TestClient, receiver: Receiver, settings: ServiceSettings, database_url: str, box: SecretBox) -> None:
    segment_id = add_segment(database_url, "VIP buyers")
    hook = add_destination(database_url, box, receiver.url("/hook"))
    receiver.answer("/hook", Reply(503, body="down for maintenance"))
    down_since = time.monotonic()
    outputs = changes_for(["ann", "bob", "cid"], 4, segment_id, emails={"ann": "ann@example.com"})
    produce(settings, outputs)
    firsts = ids(hook, outputs[:3])
    eventually(lambda: all(sum(r.id == mid for r in receiver.received("/hook")) >= 3 for mid in firsts),
               "each user's first change retried while the destination is down")
    # a few seconds by default; AM_TEST_DESTINATION_OUTAGE_S=60 gives the one-minute outage of the issue
    time.sleep(max(0.0, down_since + float(os.environ.get("AM_TEST_DESTINATION_OUTAGE_S", "0")) - time.monotonic()))
    assert {r.id for r in receiver.received("/hook")} == set(firsts)  # nobody's second change went ahead
    receiver.answer("/hook", Reply(200))
    eventually(lambda: statuses(database_url, hook) == ["delivered"] * len(outputs), "every change delivered")

    requests = receiver.received("/hook")
    accepted = [r for r in requests if r.reply.status == 200]
    assert sorted(r.id for r in accepted) == sorted(ids(hook, outputs))  # as many delivered as produced, each once
    bodies = {r.id: r.body for r in accepted}
    assert all(r.body == bodies[r.id] for r in requests)  # a retry is the same message: same id, same body
    in_order_per_user(requests, outputs, hook)
    for r in requests:
        Webhook(hook.secret).verify(r.body, r.headers)
    first = json.loads(bodies[firsts[0]])
    assert first["event"] == "Audience Entered" and first["userId"] == "ann" and first["messageId"] == firsts[0]
    assert first["properties"]["segmentName"] == "VIP buyers" and first["properties"]["vip_buyers"] is True
    assert first["context"]["traits"] == {"email": "ann@example.com"}
    assert json.loads(bodies[ids(hook, outputs)[3]])["event"] == "Audience Exited"
    attempts = {row["message_id"]: row["attempts"] for row in deliveries(database_url, hook)}
    assert all(attempts.pop(mid) >= 3 for mid in firsts) and set(attempts.values()) == {1}

    metrics = worker.get("/metrics").text
    assert f'am_destination_deliveries_total{{destination="{hook.id}",outcome="delivered"}} 12.0' in metrics
    assert f'am_destination_deliveries_total{{destination="{hook.id}",outcome="retried"}}' in metrics
    assert "am_destination_delivery_seconds_count 12.0" in metrics
    eventually(lambda: f'am_destination_queue_depth{{destination="{hook.id}"}} 0.0' in worker.get("/metrics").text,
               "the queue depth back at zero")
    health = worker.get("/actuator/health").json()
    assert health["status"] == "UP"
    assert health["components"]["worker"]["details"]["destinations"][hook.id]["status"] == "ACTIVE"
    row = destination_row(database_url, hook)
    assert row["consecutive_failures"] == 0 and row["last_delivery_at"] is not None
    assert row["last_error"] == "HTTP 503"


def test_nothing_is_lost_across_a_restart_of_the_worker(
        receiver: Receiver, settings: ServiceSettings, database_url: str, box: SecretBox) -> None:
    segment_id = add_segment(database_url, "Churn risk")
    hook = add_destination(database_url, box, receiver.url("/hook"))
    # the first round of calls is answered; later ones hang past the timeout until the worker is stopped
    receiver.answer("/hook", lambda n: Reply(200) if n < 6 else Reply(200, delay_s=3.0))
    users = [f"user-{n}" for n in range(6)]
    before = changes_for(users, 3, segment_id)
    with TestClient(delivery_app(settings)):
        produce(settings, before)
        eventually(lambda: len(receiver.received("/hook")) > 6, "a second round of calls under way")
    assert statuses(database_url, hook).count("delivered") == 6  # stopped mid-way
    after = changes_for(users, 3, segment_id)  # while no worker runs
    produce(settings, after)
    receiver.answer("/hook", Reply(200))
    with TestClient(delivery_app(settings)):
        eventually(lambda: statuses(database_url, hook) == ["delivered"] * 36, "every change delivered")
    requests = receiver.received("/hook")
    assert {r.id for r in requests} == set(ids(hook, before + after))
    bodies = {r.id: r.body for r in requests}
    assert all(r.body == bodies[r.id] for r in requests)  # a change called twice is the same message
    assert sorted(row["message_id"] for row in deliveries(database_url, hook)) == sorted(ids(hook, before + after))
    in_order_per_user(requests, before + after, hook)


def test_a_destination_that_never_answers_in_time_does_not_delay_another(
        worker: TestClient, receiver: Receiver, settings: ServiceSettings, database_url: str, box: SecretBox) -> None:
    segment_id = add_segment(database_url, "Everyone")
    slow = add_destination(database_url, box, receiver.url("/slow"))
    fast = add_destination(database_url, box, receiver.url("/fast"))
    receiver.answer("/slow", Reply(200, delay_s=settings.destination_timeout_s + 1))
    outputs = changes_for([f"user-{n}" for n in range(24)], 1, segment_id)
    produce(settings, outputs)
    eventually(lambda: statuses(database_url, fast) == ["delivered"] * 24, "the fast destination's deliveries")
    slow_rows = deliveries(database_url, slow)
    assert len(slow_rows) == 24 and all(row["status"] in ("pending", "retrying") for row in slow_rows)
    assert any(row["attempts"] == 0 for row in slow_rows)  # the fast one did not wait for the slow one's queue
    assert sorted(r.id for r in receiver.received("/fast")) == sorted(ids(fast, outputs))
    eventually(lambda: any(row["last_error"] for row in deliveries(database_url, slow)), "a timed-out call")
    assert "timed out" in next(row["last_error"] for row in deliveries(database_url, slow) if row["last_error"])


def test_a_refusal_fails_at_once_and_a_retry_after_is_honoured(
        worker: TestClient, receiver: Receiver, settings: ServiceSettings, database_url: str, box: SecretBox) -> None:
    segment_id = add_segment(database_url, "Trial")
    refusing = add_destination(database_url, box, receiver.url("/refusing"))
    busy = add_destination(database_url, box, receiver.url("/busy"))
    receiver.answer("/refusing", Reply(400, body='{"error": "missing field anonymousId"}'))
    receiver.answer("/busy", lambda n: Reply(429, {"retry-after": "1"}) if n == 0 else Reply(200))
    outputs = changes_for(["ann"], 2, segment_id)
    produce(settings, outputs)
    eventually(lambda: statuses(database_url, refusing) == ["failed", "failed"], "both refused")
    eventually(lambda: statuses(database_url, busy) == ["delivered", "delivered"], "both delivered")

    refused = deliveries(database_url, refusing)
    assert [(row["attempts"], row["last_status_code"], row["last_error"]) for row in refused] == [
        (1, 400, "HTTP 400"), (1, 400, "HTTP 400")]
    assert "missing field anonymousId" in refused[0]["last_answer"]
    assert [r.id for r in receiver.received("/refusing")] == ids(refusing, outputs)  # each once, in order
    calls = receiver.received("/busy")
    first, second = ids(busy, outputs)
    assert [r.id for r in calls] == [first, first, second]
    assert calls[1].at - calls[0].at >= 1.0  # not before the Retry-After
    metrics = worker.get("/metrics").text
    assert f'am_destination_deliveries_total{{destination="{refusing.id}",outcome="failed"}} 2.0' in metrics
    assert f'am_destination_deliveries_total{{destination="{busy.id}",outcome="retried"}} 1.0' in metrics


def test_a_failing_destination_is_paused_keeps_recording_and_delivers_once_resumed(
        receiver: Receiver, settings: ServiceSettings, database_url: str, box: SecretBox) -> None:
    segment_id = add_segment(database_url, "Lapsed")
    hook = add_destination(database_url, box, receiver.url("/hook"))
    receiver.answer("/hook", Reply(500))
    with TestClient(delivery_app(settings.model_copy(update={"destination_pause_after": 3}))) as worker:
        produce(settings, changes_for(["ann", "bob"], 1, segment_id))
        eventually(lambda: destination_row(database_url, hook)["status"] == "PAUSED", "the destination paused")
        assert destination_row(database_url, hook)["paused_reason"] == \
            "paused after 3 consecutive failed calls; last: HTTP 500"
        eventually(lambda: f'am_destination_paused{{destination="{hook.id}"}} 1.0' in worker.get("/metrics").text,
                   "the paused gauge")
        called = len(receiver.received("/hook"))
        produce(settings, changes_for(["cid", "dee"], 1, segment_id))
        eventually(lambda: len(deliveries(database_url, hook)) == 4, "changes recorded while paused")
        time.sleep(0.5)  # longer than the longest retry delay: a paused destination is not called
        assert len(receiver.received("/hook")) == called
        details = worker.get("/actuator/health").json()["components"]["worker"]["details"]
        assert details["destinations"][hook.id]["status"] == "PAUSED"

        receiver.answer("/hook", Reply(200))
        with psycopg.connect(database_url, autocommit=True) as conn:  # what the API's resume does
            conn.execute("UPDATE destinations SET status = 'ACTIVE', paused_reason = NULL, consecutive_failures = 0"
                         " WHERE id = %s", (hook.id,))
            conn.execute("UPDATE destination_deliveries SET next_attempt_at = now()"
                         " WHERE destination_id = %s AND status = 'retrying'", (hook.id,))
        eventually(lambda: statuses(database_url, hook) == ["delivered"] * 4, "the queued changes delivered")
        assert destination_row(database_url, hook)["consecutive_failures"] == 0


def test_a_new_url_is_called_at_once_not_after_the_backoff(
        receiver: Receiver, settings: ServiceSettings, database_url: str, box: SecretBox) -> None:
    segment_id = add_segment(database_url, "Fixed")
    hook = add_destination(database_url, box, receiver.url("/broken"))
    receiver.answer("/broken", Reply(503))
    slow_retries = settings.model_copy(update={"destination_retry_base_s": 60.0, "destination_retry_max_s": 60.0})
    with TestClient(delivery_app(slow_retries)):
        produce(settings, changes_for(["ann"], 1, segment_id))
        eventually(lambda: statuses(database_url, hook) == ["retrying"], "the first call refused")
        with psycopg.connect(database_url, autocommit=True) as conn:  # what the API's PUT with a new URL does
            conn.execute("UPDATE destinations SET url = %s WHERE id = %s", (receiver.url("/fixed"), hook.id))
            conn.execute("UPDATE destination_deliveries SET next_attempt_at = now()"
                         " WHERE destination_id = %s AND status = 'retrying'", (hook.id,))
        eventually(lambda: statuses(database_url, hook) == ["delivered"], "delivered to the new URL", timeout_s=10)
    assert len(receiver.received("/broken")) == 1 and len(receiver.received("/fixed")) == 1


def test_calls_are_signed_with_both_secrets_during_a_rotation_and_only_matching_changes_are_sent(
        worker: TestClient, receiver: Receiver, settings: ServiceSettings, database_url: str, box: SecretBox) -> None:
    vip, trial = add_segment(database_url, "VIP"), add_segment(database_url, "Trial")
    old, older = new_signing_secret(), new_signing_secret()
    rotating = add_destination(database_url, box, receiver.url("/rotating"), headers={"authorization": "Bearer t0k"},
                               previous_secret=old, previous_expires_at=datetime.now(UTC) + timedelta(hours=1))
    rotated = add_destination(database_url, box, receiver.url("/rotated"), previous_secret=older,
                              previous_expires_at=datetime.now(UTC) - timedelta(seconds=1))
    exits_of_trial = add_destination(database_url, box, receiver.url("/exits"), segment_ids=[trial],
                                     events=["exited"])
    outputs = [*changes_for(["ann"], 2, trial), *changes_for(["bob"], 1, vip)]
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for value in (b"{not json", json.dumps(ProbeEcho("token").to_json()).encode()):  # skipped; the echo silently
        producer.produce(settings.topic(SEGMENT_MEMBERSHIP), key="ann", value=value)
    producer.flush(10)
    produce(settings, outputs)
    eventually(lambda: len(receiver.received("/rotating")) == 3 and len(receiver.received("/rotated")) == 3
               and len(receiver.received("/exits")) == 1, "every destination's calls")
    for r in receiver.received("/rotating"):
        assert len(r.headers["webhook-signature"].split(" ")) == 2
        assert Webhook(rotating.secret).verify(r.body, r.headers) == Webhook(old).verify(r.body, r.headers)
        assert r.headers["authorization"] == "Bearer t0k"
    for r in receiver.received("/rotated"):
        Webhook(rotated.secret).verify(r.body, r.headers)
        with pytest.raises(WebhookVerificationError):  # its grace period is over
            Webhook(older).verify(r.body, r.headers)
    tampered = receiver.received("/rotated")[0]
    with pytest.raises(WebhookVerificationError):
        Webhook(rotated.secret).verify(tampered.body.replace('"track"', '"page"'), tampered.headers)
    assert [r.id for r in receiver.received("/exits")] == ids(exits_of_trial, outputs[1:2])
    assert len(deliveries(database_url, exits_of_trial)) == 1
    assert "am_delivery_worker_records_rejected_total 1.0" in worker.get("/metrics").text


def test_changes_wait_out_a_database_outage_and_health_says_so(
        receiver: Receiver, settings: ServiceSettings, database_url: str, box: SecretBox) -> None:
    segment_id = add_segment(database_url, "Returning")
    hook = add_destination(database_url, box, receiver.url("/hook"))
    name = conninfo_to_dict(database_url)["dbname"]
    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    with TestClient(delivery_app(settings.model_copy(update={"dependency_timeout_s": 0.5}))) as worker:
        eventually(lambda: hook.id in worker.get("/actuator/health").json()["components"]["worker"]["details"]
                   ["destinations"], "the destination loaded")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            outputs = changes_for(["ann", "bob", "cid"], 1, segment_id)
            produce(settings, outputs)
            eventually(lambda: "cannot record changes" in str(worker.get("/actuator/health").json()["components"]
                                                              ["worker"]), "the worker's health saying why")
            down = worker.get("/actuator/health")
            assert down.status_code == 503 and down.json()["components"]["worker"]["status"] == "DOWN"
            assert receiver.received("/hook") == []
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
        eventually(lambda: statuses(database_url, hook) == ["delivered"] * 3, "the changes delivered")
        assert sorted(r.id for r in receiver.received("/hook")) == sorted(ids(hook, outputs))
        eventually(lambda: worker.get("/actuator/health").status_code == 200, "health UP again")


def test_without_the_secrets_key_no_destination_is_called_and_health_says_why(
        receiver: Receiver, settings: ServiceSettings, database_url: str, box: SecretBox) -> None:
    hook = add_destination(database_url, box, receiver.url("/hook"))
    with TestClient(delivery_app(settings.model_copy(update={"secrets_key": SecretStr("")}))) as worker:
        eventually(lambda: worker.get("/actuator/health").status_code == 503, "health DOWN")
        component = worker.get("/actuator/health").json()["components"]["worker"]
    assert component["status"] == "DOWN" and "AM_SECRETS_KEY is not set" in component["details"]["lastError"]
    assert "AM_SECRETS_KEY" in component["details"]["destinations"][hook.id]["lastError"]


def test_a_deleted_user_leaves_its_finished_deliveries_and_destinations_still_hear_the_exit(
        worker: TestClient, receiver: Receiver, settings: ServiceSettings, database_url: str, box: SecretBox) -> None:
    segment_id = add_segment(database_url, "Newsletter")
    hook = add_destination(database_url, box, receiver.url("/hook"))
    entered = changes_for(["ann", "bob"], 1, segment_id, emails={"ann": "ann@example.com", "bob": "bob@example.com"})
    produce(settings, entered)
    eventually(lambda: statuses(database_url, hook) == ["delivered"] * 2, "both entries delivered")
    exit_of_ann = MembershipOutput(MembershipChange("ann", segment_id, "exited", datetime.now(UTC), 1))
    produce(settings, [exit_of_ann])
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "linger.ms": 5})
    for removal in (ProfileRemoved("ann", "deleted", datetime.now(UTC)),
                    ProfileRemoved("anon-1", "merged", datetime.now(UTC), into="bob")):  # a merge keeps deliveries
        producer.produce(settings.topic(SEGMENT_MEMBERSHIP), key=removal.user_id, value=json.dumps(removal.to_json()))
    assert producer.flush(10) == 0
    erased = hashlib.sha256(b"ann").hexdigest()
    eventually(lambda: any(row["user_id"] == erased for row in deliveries(database_url, hook)), "ann's entry erased")
    eventually(lambda: statuses(database_url, hook) == ["delivered"] * 3, "the exit delivered")
    with psycopg.connect(database_url) as conn:
        bodies = dict(conn.execute("SELECT message_id::text, body FROM destination_deliveries").fetchall())
    entry = json.loads(bodies[ids(hook, entered)[0]])
    assert entry["userId"] == erased and "traits" not in entry["context"] and "ann@" not in bodies[entry["messageId"]]
    assert json.loads(bodies[ids(hook, entered)[1]])["context"]["traits"] == {"email": "bob@example.com"}
    heard = [json.loads(r.body) for r in receiver.received("/hook") if r.id == ids(hook, [exit_of_ann])[0]]
    assert heard and heard[0]["userId"] == "ann" and heard[0]["event"] == "Audience Exited"
    metrics = worker.get("/metrics").text
    assert "am_delivery_worker_erased_users_total 1.0" in metrics
    assert "am_delivery_worker_records_rejected_total 0.0" in metrics
