"""The destinations API of the Communication API against real PostgreSQL and a real local HTTP receiver."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from amctl.local import processes
from server.communication_api.app import create_app as communication_app
from server.runtime.errors import ConfigurationError
from server.runtime.secrets import new_key
from server.runtime.settings import ServiceSettings
from tests.receivers import Received, Receiver, running_receiver

pytestmark = pytest.mark.api


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver() as receiver:
        yield receiver


@pytest.fixture
def settings(service_settings: ServiceSettings) -> ServiceSettings:
    return service_settings.model_copy(update={"secrets_key": SecretStr(new_key()), "destination_timeout_s": 3.0})


@pytest.fixture
def api(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(communication_app(settings)) as client:
        yield client


def add_segment(database_url: str, deleted: bool = False) -> str:
    segment_id = str(uuid.uuid4())
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO segments (id, name, type, deleted_at) VALUES (%s, %s, 'STATIC', %s)",
                     (segment_id, f"s-{segment_id[:8]}", datetime.now(UTC) if deleted else None))
    return segment_id


def create(api: TestClient, url: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/api/destinations", json={"name": f"d-{uuid.uuid4().hex[:8]}", "url": url, **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


def update(api: TestClient, destination: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = {key: destination[key] for key in ("name", "type", "url", "segmentIds", "events")} | fields
    response = api.put(f"/api/destinations/{destination['id']}", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def send_test(api: TestClient, destination_id: str) -> dict[str, Any]:
    response = api.post(f"/api/destinations/{destination_id}/test")
    assert response.status_code == 200, response.text
    return dict(response.json())


def stored(database_url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def verifies(secret: str, request: Received) -> bool:
    try:
        Webhook(secret).verify(request.body, request.headers)
    except WebhookVerificationError:
        return False
    return True


def test_the_secret_is_shown_once_and_nothing_secret_is_stored_in_clear(
        api: TestClient, receiver: Receiver, database_url: str) -> None:
    segment_id = add_segment(database_url)
    created = api.post("/api/destinations", json={
        "name": "CRM sync", "type": "WEBHOOK", "url": receiver.status_url(), "segmentIds": [segment_id],
        "headers": {"Authorization": "Bearer tok-7f3a9c", "X-Tenant": "acme-42"}})
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body["secret"]
    assert secret.startswith("whsec_") and body["secretHint"] == f"whsec_…{secret[-4:]}"
    assert created.headers["location"] == f"/api/destinations/{body['id']}"
    assert body["headers"] == {"Authorization": "•••", "X-Tenant": "•••"}
    assert body["segmentIds"] == [segment_id] and body["events"] == ["entered", "exited"]
    assert body["status"] == "ACTIVE" and body["consecutiveFailures"] == 0 and body["lagSeconds"] is None
    assert body["counts"] == {"delivered": 0, "pending": 0, "retrying": 0, "failed": 0}

    read = api.get(f"/api/destinations/{body['id']}").json()
    listed = api.get("/api/destinations").json()
    assert listed["total"] == 1 and listed["items"] == [read]
    assert "secret" not in read and read == {k: v for k, v in body.items() if k != "secret"}
    for answer in (read, listed):
        assert secret not in json.dumps(answer) and "tok-7f3a9c" not in json.dumps(answer)

    (row,) = stored(database_url, "SELECT row_to_json(d)::text FROM destinations d")
    assert secret not in row[0] and secret[6:] not in row[0]
    assert "tok-7f3a9c" not in row[0] and "acme-42" not in row[0]
    assert stored(database_url, "SELECT header_names FROM destinations") == [(["Authorization", "X-Tenant"],)]
    # the sealed values do come back for a call
    sent = receiver.calls(read["url"])
    send_test(api, body["id"])
    (call,) = receiver.calls(read["url"])[len(sent):]
    assert call.headers["authorization"] == "Bearer tok-7f3a9c" and call.headers["x-tenant"] == "acme-42"


def test_bad_input_is_refused_naming_the_field_and_nothing_is_stored(
        api: TestClient, receiver: Receiver, database_url: str) -> None:
    good = {"name": "Orders", "url": receiver.status_url(), "segmentIds": None}
    cases: list[tuple[dict[str, Any], list[str | int]]] = [
        ({"url": "ftp://example.com/x"}, ["body", "url"]),
        ({"url": "http:///no-host"}, ["body", "url"]),
        ({"url": "https://user:pw@example.com/x"}, ["body", "url"]),
        ({"url": "https://example.com/" + "x" * 2000}, ["body", "url"]),
        ({"name": "n" * 201}, ["body", "name"]),
        ({"name": ""}, ["body", "name"]),
        ({"type": "EMAIL"}, ["body", "type"]),
        ({"events": []}, ["body", "events"]),
        ({"events": ["entered", "left"]}, ["body", "events", 1]),
        ({"events": ["exited", "exited"]}, ["body", "events"]),
        ({"headers": {"Content-Type": "text/plain"}}, ["body", "headers", "Content-Type", "[key]"]),
        ({"headers": {"webhook-id": "x"}}, ["body", "headers", "webhook-id", "[key]"]),
        ({"headers": {"Bad Name": "x"}}, ["body", "headers", "Bad Name", "[key]"]),
        ({"headers": {"X-Line": "a\r\nInjected: 1"}}, ["body", "headers", "X-Line"]),
        ({"headers": {"X-Long": "v" * 1001}}, ["body", "headers", "X-Long"]),
        ({"headers": {"X-Masked": "•••"}}, ["body", "headers", "X-Masked"]),
        ({"headers": {"X-A": "1", "x-a": "2"}}, ["body", "headers"]),
        ({"headers": {f"X-H{i}": "v" for i in range(21)}}, ["body", "headers"]),
        ({"segmentIds": ["not-a-uuid"]}, ["body", "segmentIds", 0]),
        ({"segmentIds": []}, ["body", "segmentIds"]),
        ({"secret": "whsec_mine"}, ["body", "secret"]),
    ]
    for change, loc in cases:
        response = api.post("/api/destinations", json={**good, **change})
        assert response.status_code == 422, (change, response.text)
        assert loc in [problem["loc"] for problem in response.json()["detail"]], (change, response.text)

    missing, deleted = str(uuid.uuid4()), add_segment(database_url, deleted=True)
    live = add_segment(database_url)
    for segment_id in (missing, deleted):
        response = api.post("/api/destinations", json={**good, "segmentIds": [live, segment_id]})
        assert response.status_code == 404 and segment_id in response.json()["detail"], response.text
    assert stored(database_url, "SELECT count(*) FROM destinations") == [(0,)]

    create(api, receiver.status_url(), name="Orders")
    response = api.post("/api/destinations", json={**good, "name": "oRDERS"})
    assert response.status_code == 409 and "oRDERS" in response.json()["detail"], response.text
    assert stored(database_url, "SELECT count(*) FROM destinations") == [(1,)]
    assert api.get(f"/api/destinations/{uuid.uuid4()}").status_code == 404
    assert api.get("/api/destinations/not-a-uuid").status_code == 404


def test_private_targets_are_refused_unless_allowed_and_the_test_call_checks_again(
        settings: ServiceSettings, receiver: Receiver) -> None:
    url = receiver.status_url()
    blocking = settings.model_copy(update={"destination_block_private": True})
    with TestClient(communication_app(blocking.model_copy(update={"destination_allow": "127.0.0.0/8"}))) as api:
        destination = create(api, url, name="internal")
        assert send_test(api, destination["id"])["delivered"] is True
    with TestClient(communication_app(blocking)) as api:  # the allow-list no longer has it
        refused = api.post("/api/destinations", json={"name": "internal too", "url": url})
        assert refused.status_code == 422, refused.text
        (problem,) = refused.json()["detail"]
        assert problem["loc"] == ["body", "url"] and "AM_DESTINATION_ALLOW" in problem["msg"]
        assert api.get("/api/destinations").json()["total"] == 1
        refused = api.post(f"/api/destinations/{destination['id']}/test")
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "url"], refused.text
    assert len(receiver.calls(url)) == 1


def test_the_test_call_is_signed_and_its_answer_reported_whatever_it_is(
        api: TestClient, receiver: Receiver) -> None:
    destination = create(api, receiver.status_url())
    result = send_test(api, destination["id"])
    assert result["delivered"] is True and result["statusCode"] == 200 and result["error"] is None
    assert result["answer"] == "answer 200 from the receiver" and result["durationMs"] >= 0
    (call,) = receiver.calls(destination["url"])
    assert verifies(destination["secret"], call) and call.headers["webhook-id"] == result["messageId"]
    assert call.headers["content-type"] == "application/json"
    sent = json.loads(call.body)
    assert sent["type"] == "track" and sent["event"] == "Audience Entered" and sent["messageId"] == result["messageId"]
    assert sent["properties"]["test"] is True

    failing = update(api, destination, url=receiver.status_url(500))
    result = send_test(api, failing["id"])
    assert result["delivered"] is False and result["statusCode"] == 500
    assert result["answer"] == "answer 500 from the receiver" and result["error"] == "HTTP 500"

    update(api, destination, url=f"http://127.0.0.1:{processes.free_port()}/nobody-listens")
    result = send_test(api, destination["id"])
    assert result["delivered"] is False and result["statusCode"] is None and result["error"]
    assert api.get(f"/api/destinations/{destination['id']}").json()["counts"]["delivered"] == 0  # tests are not counted


def test_a_rotated_secret_signs_beside_the_new_one_until_its_grace_ends(api: TestClient, receiver: Receiver) -> None:
    destination = create(api, receiver.status_url())
    old = destination["secret"]
    rotated = api.post(f"/api/destinations/{destination['id']}/rotate-secret")  # no body: a day's grace
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != old and rotated.json()["secretHint"] == f"whsec_…{new[-4:]}"
    expires = datetime.fromisoformat(rotated.json()["previousSecretExpiresAt"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(hours=24)
    assert api.get(f"/api/destinations/{destination['id']}").json()["secretHint"] == f"whsec_…{new[-4:]}"

    send_test(api, destination["id"])
    (call,) = receiver.calls(destination["url"])
    assert call.headers["webhook-signature"].count("v1,") == 2
    assert verifies(new, call) and verifies(old, call)

    at_once = api.post(f"/api/destinations/{destination['id']}/rotate-secret", json={"graceSeconds": 0})
    assert at_once.status_code == 200 and at_once.json()["previousSecretExpiresAt"] is None
    newest = at_once.json()["secret"]
    send_test(api, destination["id"])
    call = receiver.calls(destination["url"])[-1]
    assert call.headers["webhook-signature"].count("v1,") == 1
    assert verifies(newest, call) and not verifies(new, call) and not verifies(old, call)

    for grace in (-1, 604801, "soon"):
        response = api.post(f"/api/destinations/{destination['id']}/rotate-secret", json={"graceSeconds": grace})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "graceSeconds"]
    assert api.post(f"/api/destinations/{uuid.uuid4()}/rotate-secret").status_code == 404


def test_every_operation_needs_the_write_scope(service_settings: ServiceSettings, receiver: Receiver) -> None:
    keys = {"read": "read-key-6b1d0c2e9f7a", "write": "write-key-0e4f8a7c3b21"}
    keyed = service_settings.model_copy(update={
        "secrets_key": SecretStr(new_key()), "api_keys": SecretStr(",".join(f"{k}:{s}" for s, k in keys.items()))})
    with TestClient(communication_app(keyed)) as api:
        assert api.get("/api/destinations", headers={"X-API-Key": keys["read"]}).status_code == 403
        assert api.get("/api/destinations").status_code == 401
        assert api.get("/api/destinations", headers={"X-API-Key": keys["write"]}).status_code == 200
        body = {"name": "keyed", "url": receiver.status_url()}
        assert api.post("/api/destinations", json=body, headers={"X-API-Key": keys["read"]}).status_code == 403
        assert api.post("/api/destinations", json=body, headers={"X-API-Key": keys["write"]}).status_code == 201
        operations = [(path, method, operation) for path, item in api.get("/openapi.json").json()["paths"].items()
                      if path.startswith("/api/destinations") for method, operation in item.items()]
    assert len(operations) == 9
    assert all(operation.get("x-required-scope") == "write" for _, _, operation in operations), operations


def test_update_replaces_the_definition_keeps_or_clears_headers_and_resumes(
        api: TestClient, receiver: Receiver, database_url: str) -> None:
    first, second = add_segment(database_url), add_segment(database_url)
    destination = create(api, receiver.status_url(), segmentIds=[first], headers={"X-Token": "t-1"})
    changed = update(api, destination, url=receiver.status_url(), segmentIds=[second, first], events=["exited"])
    assert changed["segmentIds"] == [second, first] and changed["events"] == ["exited"]
    assert changed["url"] != destination["url"] and changed["headers"] == {"X-Token": "•••"}
    send_test(api, destination["id"])
    assert receiver.calls(changed["url"])[-1].headers["x-token"] == "t-1"  # omitted headers stay
    cleared = update(api, changed, headers={})
    assert cleared["headers"] == {}
    send_test(api, destination["id"])
    assert "x-token" not in receiver.calls(changed["url"])[-1].headers
    assert stored(database_url, "SELECT headers_sealed FROM destinations") == [(None,)]

    paused = update(api, cleared, status="PAUSED")
    assert paused["status"] == "PAUSED" and paused["pausedReason"]
    # as the delivery worker leaves a destination it paused: failures counted, a retry waiting
    due_later = datetime.now(UTC) + timedelta(hours=1)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE destinations SET consecutive_failures = 20, paused_reason = 'paused after 20 failures'")
        insert_delivery(conn, destination["id"], "u1", first, "retrying", datetime.now(UTC), next_attempt_at=due_later)
    assert api.get(f"/api/destinations/{destination['id']}").json()["consecutiveFailures"] == 20
    resumed = update(api, cleared, status="ACTIVE")
    assert resumed["status"] == "ACTIVE" and resumed["pausedReason"] is None and resumed["consecutiveFailures"] == 0
    ((next_attempt,),) = stored(database_url, "SELECT next_attempt_at FROM destination_deliveries")
    assert next_attempt < due_later - timedelta(minutes=59)
    # a new URL (a fix, most likely) makes a waiting retry due now too; a new name alone does not
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE destination_deliveries SET next_attempt_at = %s", (due_later,))
    update(api, resumed, name=f"{resumed['name']} (renamed)")
    ((next_attempt,),) = stored(database_url, "SELECT next_attempt_at FROM destination_deliveries")
    assert next_attempt == due_later
    update(api, resumed, url=receiver.status_url())
    ((next_attempt,),) = stored(database_url, "SELECT next_attempt_at FROM destination_deliveries")
    assert next_attempt < due_later - timedelta(minutes=59)

    other = create(api, receiver.status_url(), name="Taken")
    response = api.put(f"/api/destinations/{destination['id']}",
                       json={**{k: resumed[k] for k in ("url", "segmentIds", "events")}, "name": "TAKEN"})
    assert response.status_code == 409, response.text
    response = api.put(f"/api/destinations/{destination['id']}", json={"name": "n", "url": other["url"]})
    assert response.status_code == 422  # the whole definition: nothing is widened by omission
    assert {p["loc"][-1] for p in response.json()["detail"]} == {"segmentIds", "events"}
    response = api.put(f"/api/destinations/{uuid.uuid4()}", json={"name": "n", "url": other["url"],
                                                                  "segmentIds": None, "events": ["entered"]})
    assert response.status_code == 404


def insert_delivery(conn: psycopg.Connection[Any], destination_id: str, user_id: str, segment_id: str, status: str,
                    changed_at: datetime, change: str = "entered", attempts: int = 1,
                    next_attempt_at: datetime | None = None) -> str:
    """A delivery row as the delivery worker records and works it; returns its message id."""
    message_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO destination_deliveries (destination_id, message_id, user_id, segment_id, change,"
        " segment_version, changed_at, body, status, attempts, next_attempt_at, last_status_code, last_answer,"
        " last_error, delivered_at)"
        " VALUES (%s, %s, %s, %s, %s, 1, %s, '{}', %s, %s, COALESCE(%s, now()), %s, %s, %s, %s)",
        (destination_id, message_id, user_id, segment_id, change, changed_at, status, attempts, next_attempt_at,
         {"delivered": 200, "failed": 400, "retrying": 503}.get(status), "answered" if attempts else None,
         None if status == "delivered" else "HTTP 400", datetime.now(UTC) if status == "delivered" else None))
    return message_id


def test_deliveries_counts_lag_pages_replay_and_delete(api: TestClient, receiver: Receiver, database_url: str) -> None:
    segment_id = add_segment(database_url)
    destination = create(api, receiver.status_url())
    other = create(api, receiver.status_url())
    url = f"/api/destinations/{destination['id']}"
    now = datetime.now(UTC)
    hours_ago = [now - timedelta(hours=h) for h in range(8)]
    with psycopg.connect(database_url, autocommit=True) as conn:
        ids = {  # seq order: oldest change first, as the worker records them
            "failed-7h": insert_delivery(conn, destination["id"], "ann", segment_id, "failed", hours_ago[7]),
            "delivered-6h": insert_delivery(conn, destination["id"], "bob", segment_id, "delivered", hours_ago[6]),
            "failed-3h": insert_delivery(conn, destination["id"], "ann", segment_id, "failed", hours_ago[3], "exited"),
            "delivered-2h": insert_delivery(conn, destination["id"], "bob", segment_id, "delivered", hours_ago[2]),
            "retrying-5h": insert_delivery(conn, destination["id"], "cid", segment_id, "retrying", hours_ago[5]),
            "pending-1h": insert_delivery(conn, destination["id"], "dee", segment_id, "pending", hours_ago[1],
                                          attempts=0),
        }
        insert_delivery(conn, other["id"], "ann", segment_id, "failed", hours_ago[3])

    read = api.get(url).json()
    assert read["counts"] == {"delivered": 2, "pending": 1, "retrying": 1, "failed": 2}
    assert 5 * 3600 <= read["lagSeconds"] < 5 * 3600 + 600  # the retrying change of 5 h ago is the oldest open
    listed = {d["id"]: d for d in api.get("/api/destinations").json()["items"]}
    assert listed[destination["id"]]["counts"] == read["counts"]
    assert listed[other["id"]]["counts"]["failed"] == 1 and listed[other["id"]]["lagSeconds"] is None

    first = api.get(f"{url}/deliveries", params={"limit": 4}).json()
    rest = api.get(f"{url}/deliveries", params={"limit": 4, "cursor": first["nextCursor"]}).json()
    newest_first = [d["messageId"] for d in first["items"] + rest["items"]]
    assert newest_first == list(reversed(ids.values())) and rest["nextCursor"] is None
    pending = first["items"][0]
    assert pending["status"] == "pending" and pending["userId"] == "dee" and pending["segmentId"] == segment_id
    assert pending["event"] == "Audience Entered" and pending["attempts"] == 0 and pending["nextAttemptAt"]
    failed = api.get(f"{url}/deliveries", params={"status": "failed"}).json()["items"]
    assert [d["messageId"] for d in failed] == [ids["failed-3h"], ids["failed-7h"]]
    assert failed[0]["event"] == "Audience Exited" and failed[0]["lastStatusCode"] == 400
    assert failed[0]["lastError"] == "HTTP 400" and failed[0]["nextAttemptAt"] is None
    bobs = api.get(f"{url}/deliveries", params={"userId": "bob"}).json()["items"]
    assert {d["status"] for d in bobs} == {"delivered"} and bobs[0]["deliveredAt"] and len(bobs) == 2
    for bad in ({"cursor": "12a"}, {"status": "lost"}, {"limit": 0}, {"userId": "no spaces"}):
        response = api.get(f"{url}/deliveries", params=bad)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", *bad], bad

    failed_only = api.post(f"{url}/replay", json={"from": hours_ago[4].isoformat(), "failedOnly": True})
    assert failed_only.json() == {"requeued": 1}, failed_only.text  # failed 3 h ago
    window = api.post(f"{url}/replay", json={"from": hours_ago[7].isoformat(), "to": hours_ago[6].isoformat()})
    assert window.json() == {"requeued": 2}  # failed 7 h ago and delivered 6 h ago, not the later ones
    rows = dict(stored(database_url, "SELECT message_id::text, status || ' ' || attempts || ' '"
                       " || (first_attempt_at IS NULL) FROM destination_deliveries WHERE destination_id = %s",
                       destination["id"]))
    assert rows == {ids["failed-7h"]: "pending 0 true", ids["delivered-6h"]: "pending 0 true",
                    ids["failed-3h"]: "pending 0 true", ids["delivered-2h"]: "delivered 1 true",
                    ids["retrying-5h"]: "retrying 1 true", ids["pending-1h"]: "pending 0 true"}
    assert api.get(url).json()["counts"] == {"delivered": 1, "pending": 4, "retrying": 1, "failed": 0}
    assert stored(database_url, "SELECT status FROM destination_deliveries WHERE destination_id = %s",
                  other["id"]) == [("failed",)]
    for bad, field in (({}, "from"), ({"from": "2026-01-01T00:00:00"}, "from"),
                       ({"from": now.isoformat(), "to": hours_ago[1].isoformat()}, "to")):
        response = api.post(f"{url}/replay", json=bad)
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", field], response.text

    assert api.delete(url).status_code == 204
    assert api.get(url).status_code == 404 and api.delete(url).status_code == 404
    assert api.post(f"{url}/replay", json={"from": now.isoformat()}).status_code == 404
    assert stored(database_url, "SELECT DISTINCT destination_id::text FROM destination_deliveries") == [(other["id"],)]


def test_without_a_secrets_key_destinations_say_what_to_set_and_the_rest_works(
        service_settings: ServiceSettings, receiver: Receiver, database_url: str) -> None:
    keyless = service_settings.model_copy(update={"secrets_key": SecretStr("")})
    with TestClient(communication_app(keyless)) as api:
        response = api.post("/api/destinations", json={"name": "no key", "url": receiver.status_url()})
        assert response.status_code == 503 and "AM_SECRETS_KEY" in response.json()["detail"], response.text
        assert response.headers["retry-after"]
        assert api.get("/api/destinations").json()["total"] == 0
        assert api.get("/api/campaigns").status_code == 200
        # a mail needs its signed unsubscribe link: campaigns are refused the same way, before anything is stored
        campaign = api.post("/api/campaigns", json={"name": "c", "segmentId": str(uuid.uuid4()),
                                                    "template": {"subject": "s", "body": "b"}})
        assert campaign.status_code == 503 and "unsubscribe links" in campaign.json()["detail"], campaign.text
    assert stored(database_url, "SELECT count(*) FROM campaigns") == [(0,)]
    assert stored(database_url, "SELECT count(*) FROM destinations") == [(0,)]
    malformed = "not-a-fernet-key-0123456789"
    with pytest.raises(ConfigurationError, match="AM_SECRETS_KEY") as refused:
        communication_app(service_settings.model_copy(update={"secrets_key": SecretStr(malformed)}))
    assert malformed not in str(refused.value)
