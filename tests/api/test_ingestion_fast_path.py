"""The event posts' fast path answers as the FastAPI routes do, and leaves every other answer to them.

A query string sends a request past the fast path to the route itself (the route ignores it), so the
two doors can be compared on the same app.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from server.ingestion_api.app import create_app
from server.runtime.settings import ServiceSettings
from server.stores.topics import USER_EVENTS
from tests.api.test_ingestion import SEED_EVENT, consume_all

pytestmark = pytest.mark.api

WRITE_KEY, READ_KEY = "fast-path-writer-0001", "fast-path-reader-0001"
ROUTE = "?via=route"  # past the fast path: the route answers


@pytest.fixture
def client(service_settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as c:
        yield c


def _shape(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer without the ids each request makes anew."""
    return {k: v for k, v in answer.items() if k != "eventId"}


def test_a_valid_event_is_answered_as_the_route_answers_it(client: TestClient,
                                                            service_settings: ServiceSettings) -> None:
    fast = client.post("/api/events", json=SEED_EVENT)
    routed = client.post(f"/api/events{ROUTE}", json=SEED_EVENT)
    assert (fast.status_code, routed.status_code) == (202, 202)
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert list(fast.json()) == list(routed.json()) == ["eventId", "status", "userId", "anonymousId", "identity"]
    assert _shape(fast.json()) == _shape(routed.json()) == {
        "status": "accepted", "userId": "user123", "anonymousId": None, "identity": None}
    records = consume_all(service_settings.kafka_bootstrap, service_settings.topic(USER_EVENTS), 2)
    assert sorted(r["eventId"] for r in records) == sorted([fast.json()["eventId"], routed.json()["eventId"]])
    samples = [s for family in text_string_to_metric_families(client.get("/metrics").text) for s in family.samples]
    # both counted under the route's template, and as events of their type
    assert [s.value for s in samples if s.name == "am_http_requests_total"
            and s.labels.get("route") == "/api/events" and s.labels.get("status") == "202"] == [2.0]
    assert [s.value for s in samples if s.name == "am_events_accepted_total"] == [2.0]


def test_a_valid_batch_is_answered_as_the_route_answers_it(client: TestClient) -> None:
    events = [{"userId": f"u{i}", "eventType": "page_view", "properties": {"n": i}} for i in range(3)]
    events.append({**SEED_EVENT, "eventId": "same-twice"})
    events.append({**SEED_EVENT, "eventId": "same-twice"})
    fast = client.post("/api/events/batch", json={"events": events})
    routed = client.post(f"/api/events/batch{ROUTE}",
                         json={"events": [{**e, "eventId": e.get("eventId", "x") + "-r"} for e in events[:3]]})
    assert (fast.status_code, routed.status_code) == (202, 202)
    body = fast.json()
    assert list(body) == list(routed.json()) == ["accepted", "duplicates", "rejected", "failed", "results"]
    assert (body["accepted"], body["duplicates"], body["rejected"], body["failed"]) == (4, 1, 0, 0)
    assert [r["status"] for r in body["results"]] == ["accepted"] * 4 + ["duplicate"]
    assert body["results"][0] | {"eventId": None} == {"index": 0, "status": "accepted", "eventId": None,
                                                      "errors": [], "identity": None}
    assert list(body["results"][0]) == list(routed.json()["results"][0])


@pytest.mark.parametrize(("body", "where"), [
    (b'{"userId": "u", "eventType": "not valid!"}', ["body", "eventType"]),
    (b'{"userId": "u", "eventType": "x", "extra": 1}', ["body", "extra"]),
    (b'{"userId": "u", "eventType": "x", "properties": {"k": "a\\u0000b"}}', ["body", "properties", "k"]),
    (b'{"userId": "u", "eventType": "x", "properties": {"n": 18446744073709551616}}', ["body", "properties", "n"]),
    (b'{"userId": "u", "eventType": "x", "properties": {"n": 1e400}}', ["body", "properties", "n"]),
    (b'{"userId": "u", "eventType": "x", "properties": {"s": "\\ud800"}}', ["body", "properties", "s"]),
    (b'{"userId": "u", "eventType": "x", "properties": {"n": NaN}}', ["body", "properties", "n"]),
])
def test_a_raw_body_that_does_not_validate_is_422_naming_the_field_as_before(client: TestClient, body: bytes,
                                                                            where: list[str]) -> None:
    fast = client.post("/api/events", content=body, headers={"content-type": "application/json"})
    routed = client.post(f"/api/events{ROUTE}", content=body, headers={"content-type": "application/json"})
    assert fast.status_code == routed.status_code == 422
    assert fast.json() == routed.json()
    assert where in [d["loc"] for d in fast.json()["detail"]]


def test_a_batch_with_an_unstorable_or_invalid_event_is_judged_item_by_item(client: TestClient) -> None:
    events = [{"userId": "ok", "eventType": "x"}, {"userId": "u", "eventType": "x", "properties": {"n": 2**64}},
              {"userId": "u", "eventType": "bad type!"}]
    answer = client.post("/api/events/batch", json={"events": events})
    assert answer.status_code == 207
    body = answer.json()
    assert (body["accepted"], body["rejected"]) == (1, 2)
    assert body["results"][1]["errors"] == ["properties.n: integer out of range (at most 64 bits)"]
    assert body["results"][2]["errors"][0].startswith("eventType: ")
    wrapped = client.post("/api/events/batch", json={"events": events[:1], "more": 1})
    assert wrapped.status_code == 422 and ["body", "more"] in [d["loc"] for d in wrapped.json()["detail"]]


def test_keys_are_checked_before_anything_is_stored(service_settings: ServiceSettings) -> None:
    keyed = service_settings.model_copy(update={"api_keys": SecretStr(f"{WRITE_KEY}:write,{READ_KEY}:read")})
    with TestClient(create_app(keyed)) as client:
        missing = client.post("/api/events", json=SEED_EVENT)
        reader = client.post("/api/events", json=SEED_EVENT, headers={"X-API-Key": READ_KEY})
        unknown = client.post("/api/events/batch", json={"events": [SEED_EVENT]},
                              headers={"X-API-Key": "not-a-key-of-this-app"})
        writer = client.post("/api/events", json=SEED_EVENT, headers={"X-API-Key": WRITE_KEY})
    assert (missing.status_code, reader.status_code, unknown.status_code, writer.status_code) == (401, 403, 401, 202)
    assert "needs scope 'write'" in reader.json()["detail"]


def test_a_duplicate_sent_through_both_doors_is_caught(client: TestClient, service_settings: ServiceSettings) -> None:
    body = {**SEED_EVENT, "eventId": f"both-{uuid.uuid4().hex[:8]}"}
    first = client.post("/api/events", json=body)
    second = client.post(f"/api/events{ROUTE}", json=body)
    assert (first.json()["status"], second.json()["status"]) == ("accepted", "duplicate")
    assert len(consume_all(service_settings.kafka_bootstrap, service_settings.topic(USER_EVENTS), 1)) == 1
