"""Hostile input against the three services: every limit is a 4xx with a clear message, and
nothing a caller sends reaches SQL other than as a parameter."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.communication_api.app import create_app as communication_app
from server.ingestion_api.app import create_app as ingestion_app
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app as segment_app
from server.stores.topics import USER_EVENTS
from tests.api.test_ingestion import consume_all

pytestmark = pytest.mark.api

APPS: dict[str, Callable[[ServiceSettings], FastAPI]] = {
    "segment": segment_app, "ingestion": ingestion_app, "communication": communication_app,
}
EVENT = {"userId": "user123", "eventType": "purchase", "properties": {"amount": 1500}}
CONDITION = {"field": "totalSpent", "operator": "gt", "value": 1}
TEMPLATE = {"subject": "Hi {{ firstName }}", "body": "Spent {{ totalSpent }}"}


@dataclass(frozen=True)
class Live:
    """What the services hold before a hostile request: a segment (DYNAMIC and STATIC) and a campaign."""

    clients: dict[str, TestClient]
    segment_id: str
    static_id: str
    campaign_id: str


@pytest.fixture
def live(service_settings: ServiceSettings) -> Iterator[Live]:
    clients = {name: TestClient(create(service_settings)) for name, create in APPS.items()}
    for client in clients.values():
        client.__enter__()
    try:
        seg = clients["segment"]
        segment_id = seg.post("/api/segments", json={"name": "live", "rules": {"conditions": [CONDITION]}}).json()["id"]
        static_id = seg.post("/api/segments", json={"name": "static", "type": "STATIC"}).json()["id"]
        seg.post(f"/api/segments/{static_id}/members", json={"add": ["alice"]})
        campaign = clients["communication"].post("/api/campaigns", json={
            "name": "live", "segmentId": segment_id, "template": TEMPLATE, "schedule": "on_enter"})
        yield Live(clients, segment_id, static_id, campaign.json()["id"])
    finally:
        for client in clients.values():
            client.__exit__(None, None, None)


def nested(depth: int) -> dict[str, Any]:
    rule: dict[str, Any] = CONDITION
    for _ in range(depth):
        rule = {"not": rule}
    return rule


@dataclass(frozen=True)
class Limit:
    name: str
    service: str
    method: str
    path: str
    status: int
    message: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


def segment(**changes: Any) -> dict[str, Any]:
    return {"name": "hostile", "rules": {"conditions": [CONDITION]}, **changes}


def campaign(**template: str) -> dict[str, Any]:
    return {"name": "hostile", "segmentId": "{segment}", "template": {**TEMPLATE, **template}}


LIMITS = [
    # body size, before anything is parsed
    Limit("segment body over 2 MB", "segment", "POST", "/api/segments", 413, "over 2048 KB",
          content=b'{"name":"' + b"x" * (2 * 1024 * 1024) + b'"}'),
    Limit("campaign body over 1 MB", "communication", "POST", "/api/campaigns", 413, "over 1024 KB",
          content=b" " * (1024 * 1024 + 1)),
    Limit("event over 32 KB", "ingestion", "POST", "/api/events", 413, "over 32 KB",
          json={**EVENT, "properties": {"blob": "x" * 33 * 1024}}),
    Limit("batch over 512 KB", "ingestion", "POST", "/api/events/batch", 413, "over 512 KB",
          json={"events": [{**EVENT, "properties": {"blob": "x" * 20_000}}] * 30}),
    Limit("JSON nested 200,000 deep", "segment", "POST", "/api/segments/preview", 400, "error parsing the body",
          content=b"[" * 200_000 + b"]" * 200_000),
    # rule trees
    Limit("rule deeper than 16", "segment", "POST", "/api/segments", 422, "nested deeper than 16 levels",
          json=segment(rules=nested(17))),
    Limit("rule over 500 nodes", "segment", "POST", "/api/segments", 422, "more than 500 nodes",
          json=segment(rules={"any": [CONDITION] * 501})),
    Limit("no regex operator: matches", "segment", "POST", "/api/segments", 422, "unknown operator 'matches'",
          json=segment(rules={"conditions": [{"field": "email", "operator": "matches", "value": "(a+)+$"}]})),
    Limit("no regex operator: regex", "segment", "POST", "/api/segments/preview", 422, "unknown operator 'regex'",
          json={"rules": {"conditions": [{"field": "email", "operator": "regex", "value": "(a|a)*b"}]}}),
    Limit("in-list over 1000 values", "segment", "POST", "/api/segments", 422, "up to 1000 scalars",
          json=segment(rules={"conditions": [{"field": "plan", "operator": "in", "value": list(range(1001))}]})),
    Limit("rule number beyond 64 bits", "segment", "POST", "/api/segments", 422, "at most 64 bits",
          json=segment(rules={"conditions": [{**CONDITION, "value": 2**70}]})),
    # templates: size, sandbox, render budget
    Limit("template over 64K characters", "communication", "POST", "/api/campaigns", 422,
          "longer than 65536 characters", json=campaign(body="x" * 65_537)),
    Limit("template escaping the sandbox", "communication", "POST", "/api/campaigns", 422, "unsafe",
          json=campaign(body="{{ ''.__class__.__mro__[1].__subclasses__() }}")),
    Limit("template with a huge range", "communication", "POST", "/api/campaigns", 422, "limited to 10000 items",
          json=campaign(body="{% for i in range(10**7) %}x{% endfor %}")),
    Limit("template rendering too much", "communication", "POST", "/api/campaigns", 422, "exceed 262144 characters",
          json=campaign(body="{{ 'x' * 10**7 }}")),
    # batch sizes and paging
    Limit("batch over 500 events", "ingestion", "POST", "/api/events/batch", 422, "at most 500 items",
          json={"events": [EVENT] * 501}),
    Limit("static members over 10,000", "segment", "POST", "/api/segments/{static}/members", 422,
          "at most 10000 items", json={"add": [f"u{i}" for i in range(10_001)]}),
    Limit("page over 500 segments", "segment", "GET", "/api/segments", 422, "less than or equal to 500",
          params={"limit": 501}),
    Limit("offset beyond a billion", "segment", "GET", "/api/segments", 422, "less than or equal to 1000000000",
          params={"offset": 10**12}),
    Limit("preview sample over 100", "segment", "POST", "/api/segments/preview", 422, "less than or equal to 100",
          json={"rules": {"conditions": [CONDITION]}, "sampleSize": 101}),
    # userId charset, and the values PostgreSQL or the broker cannot carry (found by fuzzing)
    Limit("userId with a space", "ingestion", "POST", "/api/events", 422, "String should match pattern",
          json={**EVENT, "userId": "a b"}),
    Limit("userId over 128 characters", "ingestion", "POST", "/api/events", 422, "at most 128 characters",
          json={**EVENT, "userId": "u" * 129}),
    Limit("userId charset in a path", "segment", "GET", "/api/users/a;b/segments", 422, "String should match pattern"),
    Limit("static member charset", "segment", "POST", "/api/segments/{static}/members", 422,
          "String should match pattern", json={"add": ["ok", "not ok"]}),
    Limit("cursor charset", "communication", "GET", "/api/campaigns/{campaign}/deliveries", 422,
          "String should match pattern", params={"cursor": "' OR 1=1"}),
    Limit("NUL in a segment name", "segment", "POST", "/api/segments", 422, "NUL",
          json=segment(name="a\x00b")),
    Limit("NUL inside a rule", "segment", "POST", "/api/segments", 422, "NUL",
          json=segment(rules={"conditions": [{"field": "plan", "operator": "eq", "value": "a\x00"}]})),
    Limit("NUL in event properties", "ingestion", "POST", "/api/events", 422, "NUL",
          json={**EVENT, "properties": {"note": "a\x00b"}}),
    Limit("event number beyond 64 bits", "ingestion", "POST", "/api/events", 422, "at most 64 bits",
          json={**EVENT, "properties": {"amount": 2**70}}),
    Limit("NUL in a template", "communication", "POST", "/api/campaigns", 422, "NUL",
          json=campaign(subject="a\x00")),
    Limit("version beyond PostgreSQL integers", "segment", "PUT", "/api/segments/{segment}", 422,
          "less than or equal to 2147483647", json={"description": "d", "version": 2**40}),
    Limit("If-Match beyond PostgreSQL integers", "segment", "PUT", "/api/segments/{segment}", 422,
          "If-Match must be an ETag", json={"description": "d"}, headers={"If-Match": 'W/"99999999999"'}),
]


def fill(value: Any, live: Live) -> Any:
    text = json.dumps(value)
    for name, real in (("segment", live.segment_id), ("static", live.static_id), ("campaign", live.campaign_id)):
        text = text.replace("{" + name + "}", real)
    return json.loads(text)


def test_every_limit_is_a_4xx_with_a_clear_message(live: Live) -> None:
    wrong = []
    for limit in LIMITS:  # one set of services for the whole table: starting them is the slow part
        response = live.clients[limit.service].request(
            limit.method, fill(limit.path, live), json=fill(limit.json, live), content=limit.content,
            params=limit.params, headers={"Content-Type": "application/json", **limit.headers})
        if response.status_code != limit.status or limit.message not in response.text:
            wrong.append(f"{limit.name}: expected {limit.status} with {limit.message!r}, "
                         f"got {response.status_code} {response.text[:300]}")
    assert not wrong, "\n".join(wrong)
    assert live.clients["segment"].get("/api/segments").json()["total"] == 2  # none of them stored anything


def test_a_batch_with_an_unstorable_event_rejects_only_that_event(live: Live) -> None:
    response = live.clients["ingestion"].post("/api/events/batch", json={"events": [
        EVENT, {**EVENT, "properties": {"amount": 2**70}}]})
    assert response.status_code == 207, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted", "rejected"]
    assert results[1]["errors"] == ["properties.amount: integer out of range (at most 64 bits)"]


PAYLOADS = [
    "'; DROP TABLE segments; --",
    "' OR '1'='1",
    "\" OR \"\"=\"",
    "1; SELECT pg_sleep(10); --",
    "%s %(id)s $1 {0}",
    "\\'; DELETE FROM campaigns; --",
    "\x00",
    "ユーザー🙂\u202egnp.exe",
    "x" * 10_000,
]


def probes(payload: str, live: Live) -> list[tuple[str, str, str, dict[str, Any]]]:
    """Every string field of every endpoint, carrying `payload`: (service, method, path, request kwargs)."""
    p, seg, camp = quote(payload, safe=""), live.segment_id, live.campaign_id
    rule = {"conditions": [{"field": payload, "operator": "eq", "value": payload}]}
    return [
        ("segment", "POST", "/api/segments", {"json": {"name": payload, "description": payload, "rules": rule}}),
        ("segment", "PUT", f"/api/segments/{seg}", {"json": {"description": payload}}),
        ("segment", "PUT", f"/api/segments/{seg}",
         {"json": {"name": payload}, "headers": {"If-Match": payload[:200].encode()}}),
        ("segment", "GET", f"/api/segments/{p}", {}),
        ("segment", "DELETE", f"/api/segments/{p}", {}),
        ("segment", "GET", "/api/segments", {"params": {"type": payload, "status": payload}}),
        ("segment", "GET", f"/api/segments/{seg}/members", {"params": {"cursor": payload}}),
        ("segment", "GET", f"/api/segments/{p}/stats", {}),
        ("segment", "POST", f"/api/segments/{live.static_id}/members",
         {"json": {"add": [payload], "remove": [payload]}}),
        ("segment", "POST", "/api/segments/preview", {"json": {"rules": rule}}),
        ("segment", "GET", f"/api/users/{p}/segments", {}),
        ("segment", "GET", f"/api/users/{p}/profile", {}),
        ("ingestion", "POST", "/api/events", {"json": {"userId": payload, "eventType": "purchase"}}),
        ("ingestion", "POST", "/api/events", {"json": {"userId": "u1", "eventType": payload, "eventId": payload}}),
        ("ingestion", "POST", "/api/events",
         {"json": {"userId": "u1", "eventType": "t", "properties": {payload: payload}}}),
        ("ingestion", "POST", "/api/events/batch", {"json": {"events": [{"userId": payload, "eventType": payload}]}}),
        ("communication", "POST", "/api/campaigns",
         {"json": {"name": payload, "segmentId": seg, "template": {"subject": payload, "body": payload}}}),
        ("communication", "POST", "/api/campaigns",
         {"json": {"name": "n", "segmentId": payload, "template": TEMPLATE}}),
        ("communication", "GET", "/api/campaigns", {"params": {"segmentId": payload, "status": payload}}),
        ("communication", "GET", f"/api/campaigns/{p}", {}),
        ("communication", "GET", f"/api/campaigns/{camp}/deliveries",
         {"params": {"cursor": payload, "status": payload}}),
        ("communication", "POST", f"/api/campaigns/{p}/cancel", {}),
    ]


def rows_leaked(body: Any) -> bool:
    """A read answered with rows for a filter or id that matches nothing."""
    if not isinstance(body, dict):
        return False
    return bool(body.get("items") or body.get("segments") or body.get("sample") or body.get("matching"))


def test_injection_payloads_in_every_string_field_are_refused_or_stored_verbatim(
    live: Live, service_settings: ServiceSettings
) -> None:
    wrong: list[str] = []
    created_segments = created_campaigns = 0
    for payload in PAYLOADS:
        for service, method, path, kwargs in probes(payload, live):
            response = live.clients[service].request(method, path, **kwargs)
            where = f"{method} {path[:60]} {json.dumps(kwargs, default=repr)[:80]} with {payload[:30]!r}"
            if response.status_code >= 500:
                wrong.append(f"{where}: {response.status_code} {response.text[:200]}")
            elif response.status_code < 300 and method == "GET" and rows_leaked(response.json()):
                wrong.append(f"{where}: rows leaked: {response.text[:200]}")
            elif response.status_code == 201 and service == "segment":
                created_segments += 1
                stored = live.clients["segment"].get(f"/api/segments/{response.json()['id']}").json()
                if (stored["name"], stored["description"]) != (payload, payload):
                    wrong.append(f"{where}: stored as {stored['name'][:40]!r}")
            elif response.status_code == 201:
                created_campaigns += 1
                stored = live.clients["communication"].get(f"/api/campaigns/{response.json()['id']}").json()
                if stored["name"] != payload or stored["template"]["subject"] != payload:
                    wrong.append(f"{where}: stored as {stored['name'][:40]!r}")
    assert not wrong, "\n".join(wrong)
    assert created_segments and created_campaigns, "no payload was stored, so none was read back"
    with psycopg.connect(service_settings.database_url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        live_segments = conn.execute("SELECT count(*) FROM segments WHERE deleted_at IS NULL").fetchone()
        campaigns = conn.execute("SELECT count(*) FROM campaigns").fetchone()
        names = conn.execute("SELECT name FROM segments WHERE id = %s", (live.segment_id,)).fetchone()
    assert {"segments", "segment_outbox", "campaigns", "campaign_deliveries"} <= tables
    assert live_segments == (2 + created_segments,) and campaigns == (1 + created_campaigns,)
    assert names is not None  # the live segment is still there (its name may carry a payload now)


# -- values valid JSON can carry but nothing can store: lone surrogates, non-finite numbers --------

LONE = "u\ud800"  # json.dumps writes it as the escape a client sends: "u\ud800"
ESCAPED = "u\\ud800"  # how a 422 names a key holding it
OVERFLOW = "<1e400>"  # replaced by the bare number 1e400, which parses as inf
NON_FINITE: list[Any] = [float("nan"), float("inf"), -float("inf"), OVERFLOW]


def raw(value: Any) -> bytes:
    """`value` as JSON text a client can send: lone surrogates as \\u escapes, NaN and ±Infinity bare."""
    return json.dumps(value).replace(f'"{OVERFLOW}"', "1e400").encode()


@dataclass(frozen=True)
class Unstorable:
    service: str
    method: str
    path: str
    loc: list[str | int]
    body: Any = None
    content: bytes | None = None
    status: int = 422

    def send(self, live: Live) -> Any:
        content = self.content if self.body is None else raw(fill(self.body, live))
        return live.clients[self.service].request(self.method, fill(self.path, live), content=content,
                                                  headers={"Content-Type": "application/json"})


def rule(value: Any = 1, field: str = "totalSpent", operator: str = "gt") -> dict[str, Any]:
    return {"conditions": [{"field": field, "operator": operator, "value": value}]}


def events(**changes: Any) -> Unstorable:
    (field, value), = changes.items()
    return Unstorable("ingestion", "POST", "/api/events", ["body", field], {**EVENT, field: value})


def amount(value: Any) -> Unstorable:
    return Unstorable("ingestion", "POST", "/api/events", ["body", "properties", "amount"],
                      {**EVENT, "properties": {"amount": value}})


def new_segment(loc: list[str | int], **changes: Any) -> Unstorable:
    return Unstorable("segment", "POST", "/api/segments", ["body", *loc], segment(**changes))


def new_campaign(loc: list[str | int], **changes: Any) -> Unstorable:
    body = {"name": "hostile", "segmentId": "{segment}", "template": TEMPLATE, **changes}
    return Unstorable("communication", "POST", "/api/campaigns", ["body", *loc], body)


def in_rule(value: Any) -> Unstorable:
    return new_segment(["rules", "conditions", 0, "value"], rules=rule(value))


UNSTORABLE = [
    # every string field of the Ingestion API, and every non-finite amount
    events(userId=LONE), events(eventType=LONE), events(eventId=LONE), events(timestamp=LONE),
    Unstorable("ingestion", "POST", "/api/events", ["body", "properties", ESCAPED], {**EVENT, "properties": {LONE: 1}}),
    Unstorable("ingestion", "POST", "/api/events", ["body", "properties", "note"],
               {**EVENT, "properties": {"note": LONE}}),
    Unstorable("ingestion", "POST", "/api/events", ["body", "properties", "cart", 0, "sku"],
               {**EVENT, "properties": {"cart": [{"sku": LONE}]}}),
    Unstorable("ingestion", "POST", "/api/events", ["body", ESCAPED], {**EVENT, LONE: "extra"}),
    *[amount(value) for value in NON_FINITE],
    # the batch is judged as a whole only outside its events
    Unstorable("ingestion", "POST", "/api/events/batch", ["body", ESCAPED], {"events": [EVENT], LONE: 1}),
    Unstorable("ingestion", "POST", "/api/events/batch", ["body", "events", "a"], {"events": {"a": float("nan")}}),
    # segments: each field, rule values and keys, preview, updates, static members
    new_segment(["name"], name=LONE), new_segment(["description"], description=LONE),
    new_segment(["type"], type=LONE), new_segment(["status"], status=LONE),
    new_segment(["rules", "conditions", 0, "field"], rules=rule(field=LONE)),
    new_segment(["rules", "conditions", 0, "operator"], rules=rule(operator=LONE)),
    new_segment(["rules", ESCAPED], rules={LONE: []}),
    in_rule(LONE), new_segment(["rules", "conditions", 0, "value", 1], rules=rule([1, LONE], operator="in")),
    *[in_rule(value) for value in NON_FINITE],
    new_segment(["rules", "conditions", 0, "value", 1], rules=rule([1, float("nan")], field="plan", operator="in")),
    Unstorable("segment", "PUT", "/api/segments/{segment}", ["body", "name"], {"name": LONE}),
    Unstorable("segment", "PUT", "/api/segments/{segment}", ["body", "description"], {"description": LONE}),
    Unstorable("segment", "PUT", "/api/segments/{segment}", ["body", "version"], {"description": "d",
                                                                                  "version": float("nan")}),
    Unstorable("segment", "PUT", "/api/segments/{segment}", ["body", "rules", "conditions", 0, "value"],
               {"rules": rule(OVERFLOW)}),
    Unstorable("segment", "POST", "/api/segments/preview", ["body", "rules", "conditions", 0, "value"],
               {"rules": rule(float("nan"))}),
    Unstorable("segment", "POST", "/api/segments/preview", ["body", "sampleSize"],
               {"rules": rule(), "sampleSize": float("inf")}),
    Unstorable("segment", "POST", "/api/segments/{static}/members", ["body", "add", 0], {"add": [LONE]}),
    Unstorable("segment", "POST", "/api/segments/{static}/members", ["body", "remove", 1], {"remove": ["ok", LONE]}),
    # campaigns: each field, the template, the schedule
    new_campaign(["name"], name=LONE), new_campaign(["segmentId"], segmentId=LONE),
    new_campaign(["channel"], channel=LONE), new_campaign(["schedule"], schedule=LONE),
    new_campaign(["schedule", "at"], schedule={"at": LONE}),
    new_campaign(["template", "subject"], template={**TEMPLATE, "subject": LONE}),
    new_campaign(["template", "body"], template={**TEMPLATE, "body": f"Hi {LONE}"}),
    new_campaign(["name"], name=float("nan")), new_campaign(["schedule", "at"], schedule={"at": -float("inf")}),
    new_campaign(["template", "subject"], template={**TEMPLATE, "subject": OVERFLOW}),
    # bytes that are no JSON text: an encoded surrogate is refused where it is, invalid UTF-8 is a parse error
    Unstorable("ingestion", "POST", "/api/events", ["body", "userId"],
               content=b'{"userId": "u\xed\xa0\x80", "eventType": "purchase"}'),
    Unstorable("segment", "POST", "/api/segments", [], content=b'{"name": "\xff", "type": "STATIC"}', status=400),
    # percent-encoded path segments and query values: an encoded surrogate, invalid UTF-8, NUL
    *[Unstorable("segment", method, path, ["path", "segment_id"], body) for method, path, body in [
        ("GET", "/api/segments/%ED%A0%80", None), ("DELETE", "/api/segments/%FF", None),
        ("PUT", "/api/segments/%00", {"description": "d"}), ("GET", "/api/segments/%00/stats", None),
        ("GET", "/api/segments/%ED%A0%80/members", None), ("POST", "/api/segments/%FF/members", {"add": ["a"]})]],
    Unstorable("segment", "GET", "/api/users/%ED%A0%80/segments", ["path", "user_id"]),
    Unstorable("segment", "GET", "/api/users/%00/profile", ["path", "user_id"]),
    Unstorable("segment", "GET", "/api/segments?type=%ED%A0%80", ["query", "type"]),
    Unstorable("segment", "GET", "/api/segments?limit=5&status=%00", ["query", "status"]),
    Unstorable("segment", "GET", "/api/segments?%FF=1", ["query", "\\xff"]),
    Unstorable("segment", "GET", "/api/segments/{segment}/members?cursor=%FF", ["query", "cursor"]),
    Unstorable("communication", "GET", "/api/campaigns/%00", ["path", "campaign_id"]),
    Unstorable("communication", "POST", "/api/campaigns/%ED%A0%80/cancel", ["path", "campaign_id"]),
    Unstorable("communication", "GET", "/api/campaigns?segmentId=%ED%A0%80", ["query", "segmentId"]),
    Unstorable("communication", "GET", "/api/campaigns/{campaign}/deliveries?cursor=%00", ["query", "cursor"]),
    Unstorable("communication", "GET", "/api/campaigns/{campaign}/deliveries?status=%FF", ["query", "status"]),
]


def stored_counts(settings: ServiceSettings) -> tuple[Any, ...]:
    with psycopg.connect(settings.database_url) as conn:
        return tuple(conn.execute(query).fetchone() for query in (
            "SELECT count(*), max(version) FROM segments", "SELECT count(*) FROM segment_outbox",
            "SELECT count(*) FROM campaigns", "SELECT count(*) FROM segment_memberships",
            "SELECT count(*) FROM user_profiles"))


def test_every_operation_of_every_service_checks_what_it_is_sent(live: Live) -> None:
    unchecked, tried = [], 0
    for name, client in live.clients.items():
        for path, operations in client.get("/openapi.json").json()["paths"].items():
            for method in operations:
                tried += 1
                response = client.request(method, re.sub(r"\{[^}]+\}", "x", path) + "?probe=%00")
                if response.status_code != 422 or response.json()["detail"][0]["loc"] != ["query", "probe"]:
                    unchecked.append(f"{name} {method.upper()} {path}: {response.status_code} {response.text[:100]}")
    assert tried >= 15 and not unchecked, "\n".join(unchecked)


def test_unstorable_values_anywhere_are_refused_naming_the_field_and_nothing_is_stored(
    live: Live, service_settings: ServiceSettings
) -> None:
    before = stored_counts(service_settings)
    wrong = []
    for case in UNSTORABLE:
        response = case.send(live)
        detail = response.json().get("detail") if response.status_code < 500 else None
        named = case.status != 422 or any(d.get("loc") == case.loc for d in detail or [] if isinstance(d, dict))
        if response.status_code != case.status or not named:
            wrong.append(f"{case.method} {case.path} {case.loc}: expected {case.status} naming {case.loc}, "
                         f"got {response.status_code} {response.text[:300]}")
    assert not wrong, "\n".join(wrong)
    assert stored_counts(service_settings) == before  # no segment, version, outbox row, campaign or member
    assert consume_all(service_settings.kafka_bootstrap, service_settings.topic(USER_EVENTS), 1) == []
    for name, client in live.clients.items():
        health = client.get("/actuator/health")
        assert health.status_code == 200 and health.json()["status"] == "UP", f"{name}: {health.text}"


def test_a_batch_rejects_each_unstorable_event_naming_its_field_and_stores_the_rest_as_sent(
    live: Live, service_settings: ServiceSettings
) -> None:
    good = [{**EVENT, "userId": "first", "properties": {"amount": 12.5}},
            {**EVENT, "userId": "last", "properties": {"amount": 1e308, "note": "ユーザー🙂"}}]
    hostile = [{**EVENT, "userId": LONE}, {**EVENT, "properties": {"amount": float("nan")}},
               {**EVENT, "properties": {LONE: 1}}, {**EVENT, "properties": {"amount": OVERFLOW}},
               {**EVENT, "properties": {"amount": -float("inf")}}]
    batch = raw({"events": [good[0], *hostile, good[1]]})
    response = live.clients["ingestion"].post("/api/events/batch", content=batch,
                                              headers={"Content-Type": "application/json"})
    assert response.status_code == 207, response.text
    body = response.json()
    assert [r["status"] for r in body["results"]] == ["accepted", *["rejected"] * 5, "accepted"]
    assert [r["errors"] for r in body["results"][1:6]] == [
        ["userId: contains a lone surrogate (\\ud800), which is not storable text"],
        ["properties.amount: must be a finite number, not nan"],
        ["properties.u\\ud800: key contains a lone surrogate (\\ud800), which is not storable text"],
        ["properties.amount: must be a finite number, not inf"],
        ["properties.amount: must be a finite number, not -inf"],
    ]
    stored = consume_all(service_settings.kafka_bootstrap, service_settings.topic(USER_EVENTS), 2)
    assert sorted((r["userId"], r["properties"]) for r in stored) == sorted(
        (e["userId"], e["properties"]) for e in good)  # exactly the two good ones, amounts as sent


def test_an_error_quoting_bytes_that_are_no_text_is_answered_not_a_500(live: Live) -> None:
    response = live.clients["ingestion"].post("/api/events", content=b'{"userId": "\xed\xa0\x80\xff"}',
                                              headers={"Content-Type": "text/plain"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["input"] == '{"userId": "\\xed\\xa0\\x80\\xff"}'
