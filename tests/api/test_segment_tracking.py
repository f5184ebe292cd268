"""Segment's HTTP tracking API on the Ingestion API, driven by Segment's own Python library
(segment-analytics-python) over real HTTP, with the records read back from `user-events`."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydantic import SecretStr
from segment.analytics import Client
from segment.analytics.request import APIError

from amctl.local import processes
from server.domain.events import UserEvent
from server.domain.pipeline import IdentifyRecord
from server.ingestion_api.app import create_app
from server.runtime.settings import ServiceSettings
from tests.api.test_identity_ingestion import records

pytestmark = pytest.mark.api

WRITE_KEY = "segment-write-key-7c1e9a40"
READ_KEY = "segment-read-key-2b8d6f13"


@pytest.fixture
def settings(service_settings: ServiceSettings) -> ServiceSettings:
    return service_settings.model_copy(update={"api_keys": SecretStr(f"{WRITE_KEY}:write,{READ_KEY}:read")})


@pytest.fixture
def host(settings: ServiceSettings) -> Iterator[str]:
    """The Ingestion API with keys, served over real HTTP on a free port, as Segment's library needs."""
    port = processes.free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the Ingestion API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def segment_client(host: str, write_key: str = WRITE_KEY) -> Client:
    return Client(write_key=write_key, host=host, sync_mode=True, max_retries=0)


def test_an_anonymous_visitor_is_tracked_then_identified(host: str, settings: ServiceSettings) -> None:
    analytics = segment_client(host)
    analytics.track(anonymous_id="visitor-1", event="Product Viewed", properties={"sku": "A-1", "price": 12.5},
                    message_id="m-1")
    analytics.page(anonymous_id="visitor-1", category="Docs", name="Pricing", properties={"path": "/pricing"},
                   message_id="m-2")
    analytics.identify(user_id="user-1", anonymous_id="visitor-1", traits={"plan": "pro"}, message_id="m-3")
    analytics.track(anonymous_id="visitor-1", event="Order Completed", properties={"amount": 40},
                    message_id="m-4")
    got = records(settings, 5)
    events = {r.event_id: (k, r) for k, r in got if isinstance(r, UserEvent)}
    assert set(events) == {"m-1", "m-2", "m-3", "m-4"}  # messageId is the eventId
    key, viewed = events["m-1"]
    assert key == "visitor-1" and viewed.anonymous and viewed.event_type == "Product Viewed"
    assert viewed.properties == {"sku": "A-1", "price": 12.5}
    key, page = events["m-2"]
    assert page.event_type == "page" and page.properties == {"path": "/pricing", "name": "Pricing", "category": "Docs"}
    key, identify = events["m-3"]
    assert key == "user-1" and identify.event_type == "identify" and identify.properties == {"plan": "pro"}
    assert identify.anonymous_id == "visitor-1"
    key, order = events["m-4"]  # linked by then: routed to the user
    assert key == "user-1" and order.user_id == "user-1" and order.anonymous_id == "visitor-1"
    [(key, link)] = [(k, r) for k, r in got if isinstance(r, IdentifyRecord)]
    assert key == "visitor-1" and (link.anonymous_id, link.user_id) == ("visitor-1", "user-1")


def test_screen_alias_and_a_repeated_message_id(host: str, settings: ServiceSettings) -> None:
    analytics = segment_client(host)
    analytics.screen(user_id="user-2", name="Home", message_id="s-1")
    analytics.screen(user_id="user-2", name="Home", message_id="s-1")  # a retry: not stored twice
    analytics.alias(previous_id="device-9", user_id="user-2", message_id="a-1")
    got = records(settings, 2)
    [(key, screen)] = [(k, r) for k, r in got if isinstance(r, UserEvent)]
    assert key == "user-2" and screen.event_type == "screen" and screen.properties == {"name": "Home"}
    [(key, link)] = [(k, r) for k, r in got if isinstance(r, IdentifyRecord)]
    assert key == "device-9" and link.user_id == "user-2"


def test_the_write_key_is_checked_as_an_api_key(host: str) -> None:
    with pytest.raises(APIError) as unknown:
        segment_client(host, "not-a-key-of-this-service").track(user_id="u", event="x")
    assert unknown.value.status == 401
    with pytest.raises(APIError) as read_only:
        segment_client(host, READ_KEY).track(user_id="u", event="x")
    assert read_only.value.status == 403


@pytest.fixture
def api(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        yield client


def test_single_calls_answer_success_after_the_ack(api: TestClient, settings: ServiceSettings) -> None:
    response = api.post("/v1/track", json={"userId": "u-1", "event": "Order Completed", "properties": {"n": 1},
                                           "context": {"library": {"name": "curl"}}, "version": 2})
    assert (response.status_code, response.json()) == (200, {"success": True, "identity": None})
    [(key, event)] = records(settings, 1)
    assert key == "u-1" and event.event_type == "Order Completed"


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/track", {"event": "x"}, "userId"),
    ("/v1/track", {"userId": "u"}, "event"),
    ("/v1/track", {"userId": "u", "event": "bad  name"}, "event"),
    ("/v1/track", {"userId": "u", "event": "x", "messageId": "has space"}, "messageId"),
    ("/v1/identify", {"userId": "u", "traits": {str(i): i for i in range(201)}}, "traits"),
    ("/v1/alias", {"userId": "u"}, "previousId"),
    ("/v1/alias", {"userId": "u", "previousId": "u"}, "previousId"),
    ("/v1/group", {"userId": "u"}, "groupId"),
    ("/v1/page", {"userId": "u", "timestamp": "2000-01-01T00:00:00Z"}, "timestamp"),
    ("/v1/track", {"userId": "u", "event": "x", "sentAt": 0.0}, "sentAt"),  # a number is not read as 1970
    ("/v1/batch", {"batch": [{"type": "track", "userId": "u", "event": "x"}], "sentAt": 1700000000}, "sentAt"),
])
def test_bad_single_calls_are_422_naming_segments_field(api: TestClient, path: str, body: dict[str, Any],
                                                        field: str) -> None:
    response = api.post(path, json=body)
    assert response.status_code == 422, response.text
    assert field in [str(part) for d in response.json()["detail"] for part in d["loc"]]


def test_timestamps_are_corrected_for_the_senders_clock(api: TestClient, settings: ServiceSettings) -> None:
    now = datetime.now(UTC)
    happened, skew = now - timedelta(minutes=10), timedelta(hours=2)  # the sender's clock is 2 h fast
    body = {"userId": "u", "event": "x", "messageId": "skewed",
            "timestamp": (happened + skew).isoformat(), "sentAt": (now + skew).isoformat()}
    assert api.post("/v1/track", json=body).status_code == 200  # uncorrected it would be 2 h in the future
    plain = {"userId": "u", "event": "x", "messageId": "plain", "timestamp": happened.isoformat()}
    assert api.post("/v1/track", json=plain).status_code == 200
    got = {r.event_id: r for _, r in records(settings, 2)}
    assert abs(got["skewed"].timestamp - happened) < timedelta(seconds=5)
    assert abs(got["plain"].timestamp - happened) < timedelta(milliseconds=1)


def test_a_refused_alias_is_409(api: TestClient) -> None:
    assert api.post("/v1/alias", json={"previousId": "d-1", "userId": "u-1"}).status_code == 200
    refused = api.post("/v1/alias", json={"previousId": "d-1", "userId": "u-2"})
    assert refused.status_code == 409 and "already linked to another user, 'u-1'" in refused.json()["detail"]


def test_batch_judges_each_call(api: TestClient, settings: ServiceSettings) -> None:
    batch = [
        {"type": "track", "anonymousId": "v-1", "event": "Viewed", "messageId": "b-1"},
        {"type": "track", "anonymousId": "v-1", "messageId": "b-2"},  # no event
        {"type": "launch", "userId": "u", "messageId": "b-3"},
        {"type": "alias", "previousId": "v-1", "userId": "u-1", "messageId": "b-4"},
        {"type": "page", "anonymousId": "v-1", "name": "Home", "messageId": "b-5"},
    ]
    sent_at = datetime.now(UTC).isoformat()
    response = api.post("/v1/batch", json={"batch": batch, "writeKey": WRITE_KEY, "sentAt": sent_at})
    assert response.status_code == 207, response.text
    body = response.json()
    assert body["success"] is False and (body["accepted"], body["rejected"]) == (3, 2)
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "rejected", "accepted", "accepted"]
    assert body["results"][1]["errors"][0].startswith("event:")
    assert body["results"][2]["errors"][0].startswith("type:")
    assert body["results"][3]["identity"]["status"] == "linked"
    got = records(settings, 3)
    keys = {r.event_id: k for k, r in got if isinstance(r, UserEvent)}
    assert keys == {"b-1": "u-1", "b-5": "u-1"}  # the alias was applied first: both go to the user
    again = api.post("/v1/batch", json={"batch": [batch[0], batch[4]]})
    assert again.status_code == 200 and again.json()["success"] is True and again.json()["duplicates"] == 2
