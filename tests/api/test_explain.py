"""Why a user is in a segment, over HTTP and through amctl against the real Segment API and PostgreSQL: the rule
engine's writes (profiles, memberships with their reasons) are played by writing the profile store as its
writer does, and the writer itself is checked to keep each change's reason."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from confluent_kafka import Producer
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from psycopg import sql

from amctl.local import processes
from amctl.local.broker import EmbeddedBroker
from amctl.local.postgres import EmbeddedPostgres
from flinkjob.writer import StoreWriter
from server.domain.events import UserEvent
from server.domain.membership import MembershipChange
from server.domain.pipeline import MembershipOutput
from server.domain.profile import Profile, apply_event
from server.runtime.secrets import new_key
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app
from server.stores.kafka import create_topics
from server.stores.postgres import Database
from server.stores.postgres_profiles import PostgresProfileStore
from server.stores.records import encode
from server.stores.topics import SEGMENT_MEMBERSHIP
from tests.api.conftest import healthy
from tests.cli import invoke, one_error
from tests.conftest import unique_name
from tests.contracts import membership_validator

pytestmark = pytest.mark.api
NOW = datetime.now(UTC).replace(microsecond=0)
ENTERED_AT = NOW - timedelta(minutes=5)
RULE = {"all": [{"field": "plan", "operator": "eq", "value": "pro"},
                {"event": "purchase", "count": {"gte": 2}, "within": "P30D"}]}
BECAUSE = {"cause": "event", "eventId": "e-2", "eventType": "purchase", "eventAt": "2026-11-01T12:02:00Z",
           "leaves": [{"path": "rules.all[1]", "value": 2, "result": True, "was": 1}]}


@pytest.fixture
def client(service_settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as c:
        yield c


def shopper(user: str, purchases: int, plan: str | None = "pro") -> Profile:
    """The profile the rule engine builds from `purchases` purchases in the last minutes (eventIds e-1, e-2, …)."""
    profile: Profile | None = None
    for i in range(1, purchases + 1):
        properties: dict[str, Any] = {"amount": 600} | ({"plan": plan} if plan is not None else {})
        event = UserEvent(user, "purchase", f"e-{i}", NOW - timedelta(minutes=10 - i), properties)
        profile = apply_event(profile, event, timedelta(days=30))
    assert profile is not None
    return profile


def entered(user: str, segment_id: str, because: dict[str, Any] | None = BECAUSE) -> MembershipChange:
    return MembershipChange(user, segment_id, "entered", ENTERED_AT, 1, because=because)


def in_store(database_url: str, profiles: Sequence[Profile] = (), changes: Sequence[MembershipChange] = (),
             links: Sequence[tuple[str, str]] = ()) -> None:
    """Write as the rule engine's writer does: profiles, then membership changes; and link aliases."""
    async def write() -> None:
        db = Database(database_url, 2, 5)
        await db.open(10)
        try:
            store = PostgresProfileStore(db)
            await store.put_profiles(list(profiles))
            await store.apply_changes(list(changes))
            for anonymous_id, user_id in links:
                assert (await store.link_alias(anonymous_id, user_id, 10)).made
        finally:
            await db.close()
    asyncio.run(write())


def create(client: TestClient, rules: dict[str, Any] | None = RULE, segment_type: str = "DYNAMIC") -> str:
    response = client.post("/api/segments", json={"name": f"seg {uuid.uuid4().hex[:8]}", "type": segment_type,
                                                  "rules": rules})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def explained(client: TestClient, user: str, segment_id: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/users/{user}/segments/{segment_id}/explain", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_member_asked_by_an_alias_sees_the_rule_node_by_node_and_the_reason_it_entered(
        client: TestClient, database_url: str) -> None:
    segment = create(client)
    in_store(database_url, [shopper("alice", 2)], [entered("alice", segment)], links=[("anon-1", "alice")])
    body = explained(client, "anon-1", segment)
    assert (body["userId"], body["resolvedFrom"], body["segmentId"], body["member"]) == ("alice", "anon-1", segment,
                                                                                         True)
    assert datetime.fromisoformat(body["enteredAt"]) == ENTERED_AT
    assert abs(datetime.fromisoformat(body["evaluatedAt"]) - datetime.now(UTC)) < timedelta(minutes=1)
    assert body["rule"] == {
        "all": [{"field": "plan", "operator": "eq", "value": "pro", "operand": "pro", "path": "rules.all[0]",
                 "result": True},
                {"event": "purchase", "count": {"gte": 2}, "within": "P30D", "path": "rules.all[1]", "value": 2,
                 "result": True}],
        "path": "rules", "result": True}
    assert body["because"] == BECAUSE and body["note"] is None
    keys = list(body["because"])
    assert (keys[0], keys[-1]) == ("cause", "leaves")  # in the order the rule engine wrote it
    assert list(body["because"]["leaves"][0]) == ["path", "value", "result", "was"]
    assert explained(client, "alice", segment) | {"evaluatedAt": None} == body | {"resolvedFrom": None,
                                                                                  "evaluatedAt": None}
    # the user's segments say why too
    segments = client.get("/api/users/anon-1/segments").json()["segments"]
    assert [(s["segmentId"], s["because"]) for s in segments] == [(segment, BECAUSE)]


def test_when_the_membership_and_the_rule_disagree_a_note_says_what_is_not_applied_yet(
        client: TestClient, database_url: str) -> None:
    segment = create(client)
    in_store(database_url, [shopper("bob", 2, plan=None), shopper("cid", 2)], [entered("bob", segment)])
    stale = explained(client, "bob", segment)  # a member, but the profile has no plan (any more)
    assert stale["member"] is True and stale["rule"]["result"] is False
    assert stale["rule"]["all"][0] == {"field": "plan", "operator": "eq", "value": None, "operand": "pro",
                                       "path": "rules.all[0]", "result": False, "missing": True}
    assert stale["note"].startswith("the user is a member, but the rule does not hold now: a window of the rule")
    assert "has not applied the user's latest event" in stale["note"]
    early = explained(client, "cid", segment)  # the rule holds, the rule engine has not made cid a member yet
    assert (early["member"], early["rule"]["result"], early["because"], early["enteredAt"]) == (False, True, None,
                                                                                                 None)
    assert early["note"].startswith("the rule holds now, but the user is not a member")
    plain = create(client, {"field": "plan", "operator": "eq", "value": "pro"})  # no window
    assert explained(client, "cid", plain)["note"] == (
        "the rule holds now, but the user is not a member: the rule engine has not applied the user's latest "
        "event, or this version of the segment, yet")


def test_a_member_of_a_paused_segment_is_noted(client: TestClient, database_url: str) -> None:
    segment = create(client)
    in_store(database_url, [shopper("dan", 2), shopper("eve", 2)], [entered("dan", segment)])
    assert client.put(f"/api/segments/{segment}", json={"status": "PAUSED"}).status_code == 200
    member = explained(client, "dan", segment)
    assert member["rule"]["result"] is True and member["member"] is True
    assert member["note"] == ("the segment is PAUSED: the rule engine no longer evaluates it and lets its members "
                              "go; this membership has not exited yet")
    assert explained(client, "eve", segment)["note"] == (
        "the segment is PAUSED: the rule holds, but no one enters a paused segment")


def test_a_static_segment_has_no_rule_and_a_reference_sees_the_stored_memberships(
        client: TestClient, database_url: str) -> None:
    static = create(client, None, "STATIC")
    added = client.post(f"/api/segments/{static}/members", json={"add": ["fay", "gus"]})
    assert added.status_code == 200, added.text
    in_store(database_url, [shopper("fay", 1)])  # gus has no profile: only the membership
    gus = explained(client, "gus", static)
    assert (gus["member"], gus["rule"], gus["because"], gus["note"]) == (True, None, None, None)
    referring = create(client, {"all": [{"segment": static}, {"field": "plan", "operator": "exists"}]})
    fay = explained(client, "fay", referring)
    assert fay["rule"]["all"] == [
        {"segment": static, "path": "rules.all[0]", "value": True, "result": True},
        {"field": "plan", "operator": "exists", "path": "rules.all[1]", "value": "pro", "result": True}]
    assert explained(client, "gus", referring)["rule"]["all"][1]["missing"] is True


def test_an_unknown_user_or_segment_is_a_404_saying_which(client: TestClient, database_url: str) -> None:
    segment = create(client)
    in_store(database_url, [shopper("hal", 1)])
    gone = create(client)
    assert client.delete(f"/api/segments/{gone}").status_code == 204
    for unknown in (str(uuid.uuid4()), "not-a-uuid", gone):
        response = client.get(f"/api/users/hal/segments/{unknown}/explain")
        assert response.status_code == 404
        assert response.json() == {"detail": f"no segment with id '{unknown}'", "error": "NotFound"}
    nobody = client.get(f"/api/users/nobody/segments/{segment}/explain")
    assert nobody.status_code == 404
    assert nobody.json()["detail"] == "no user 'nobody': no event seen for it and no membership"


def test_after_waits_for_the_event_and_bad_parameters_are_a_422_naming_them(client: TestClient,
                                                                          database_url: str) -> None:
    segment = create(client)
    in_store(database_url, [shopper("ivy", 2)])
    assert explained(client, "ivy", segment, after="e-2")["rule"]["result"] is True
    pending = client.get(f"/api/users/ivy/segments/{segment}/explain", params={"after": "e-9", "wait": 0.1})
    assert pending.status_code == 202
    assert pending.json() == {"status": "pending", "detail": "event e-9 is not applied yet after 0.1 s",
                              "userId": "ivy"}
    for path, params, field in ((f"/api/users/ivy/segments/{segment}/explain", {"wait": 11}, ["query", "wait"]),
                                (f"/api/users/i%20v/segments/{segment}/explain", {}, ["path", "user_id"])):
        response = client.get(path, params=params)
        assert response.status_code == 422
        assert [d["loc"] for d in response.json()["detail"]] == [field]
    operation = client.get("/openapi.json").json()["paths"]["/api/users/{user_id}/segments/{segment_id}/explain"]
    assert {"200", "202", "404", "422"} <= set(operation["get"]["responses"])


def test_the_writer_keeps_each_changes_reason_in_the_membership_and_the_ledger(
        service_settings: ServiceSettings, database_url: str) -> None:
    segment, exit_reason = str(uuid.uuid4()), {"cause": "time", "leaves": [
        {"path": "rules.all[1]", "value": 1, "result": False, "was": 2}]}
    outputs = [MembershipOutput(entered("jo", segment), shopper("jo", 2)),
               MembershipOutput(MembershipChange("jo", segment, "exited", NOW, 1, because=exit_reason)),
               MembershipOutput(MembershipChange("jo", segment, "entered", NOW + timedelta(seconds=1), 1,
                                                 because={"cause": "time", "leaves": []}))]
    producer = Producer({"bootstrap.servers": service_settings.kafka_bootstrap, "linger.ms": 5})
    for record in outputs:
        membership_validator().validate(record.to_json())  # what the rule engine publishes
        producer.produce(service_settings.topic(SEGMENT_MEMBERSHIP), key="jo", value=encode(record))
    assert producer.flush(10) == 0
    db = Database(database_url, 2, 5)
    writer = StoreWriter(service_settings.kafka_bootstrap, service_settings.topic_prefix, PostgresProfileStore(db),
                         100, CollectorRegistry())

    async def write() -> None:
        await db.open(10)
        try:
            read: list[Any] = []
            deadline = time.monotonic() + 15
            while len(read) < len(outputs) and time.monotonic() < deadline:
                read += [m for m in await asyncio.to_thread(writer.consumer.consume, 100, 0.2) if not m.error()]
            batches = writer.read(read)
            assert len(batches) == 1 and len(batches[0].changes) == len(outputs)  # one batch, one apply_changes
            await writer.write(batches[0])
        finally:
            await db.close()
    try:
        asyncio.run(write())
    finally:
        writer.close()
    with psycopg.connect(database_url) as conn:
        held = conn.execute("SELECT because FROM segment_memberships WHERE user_id = 'jo'").fetchall()
        ledger = conn.execute("SELECT change, because FROM membership_changes WHERE user_id = 'jo' ORDER BY id")
        assert held == [({"cause": "time", "leaves": []},)]
        assert ledger.fetchall() == [("entered", BECAUSE), ("exited", exit_reason),
                                     ("entered", {"cause": "time", "leaves": []})]


# -- amctl against the Segment API as `amctl up` runs it ---------------------------------------------------


@pytest.fixture(scope="module")
def segment_api(postgres_server: EmbeddedPostgres, template_database: str, kafka_broker: EmbeddedBroker,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The Segment API as a process on a database and topics of this module's own, and the environment that
    points amctl at it (`AM_DATABASE_URL` too, for the tests to write the store)."""
    database, prefix = unique_name("db_explain_"), unique_name("explain") + "."
    logs = tmp_path_factory.mktemp("explain")
    with psycopg.connect(postgres_server.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(database),
                                                                      sql.Identifier(template_database)))
    create_topics(kafka_broker.bootstrap, prefix)
    database_url = f"postgresql://postgres@{postgres_server.host}:{postgres_server.port}/{database}"
    port, log = processes.free_port(), logs / "segment_api.log"
    pid = processes.spawn([sys.executable, "-m", "server.segment_api"], {
        **os.environ, "AM_PORT": str(port), "AM_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "AM_DATABASE_URL": database_url, "AM_TOPIC_PREFIX": prefix, "AM_SECRETS_KEY": new_key()}, log)
    try:
        deadline = time.monotonic() + 30
        while not healthy(port):
            assert time.monotonic() < deadline and processes.process_alive(pid), log.read_text()
            time.sleep(0.1)
        env = {**os.environ, "AMCTL_STATE_DIR": str(logs / "state"), "COLUMNS": "200", "NO_COLOR": "1",
               "AMCTL_PORT_SEGMENT_API": str(port), "AM_DATABASE_URL": database_url}
        env.pop("AMCTL_API_KEY", None)
        yield env
    finally:
        processes.stop(pid)




def _segment(env: dict[str, str], name: str, rules: dict[str, Any]) -> str:
    created = invoke("segment", "create", name, "--rules", json.dumps(rules), "--json", env=env)
    assert created.exit_code == 0, created.output
    return str(json.loads(created.stdout)["id"])


def test_amctl_user_explain_draws_the_tree_with_values_and_says_why_the_user_entered(
        segment_api: dict[str, str]) -> None:
    user = f"kim-{uuid.uuid4().hex[:6]}"
    segment = _segment(segment_api, f"Pro buyers {user}", RULE)
    in_store(segment_api["AM_DATABASE_URL"], [shopper(user, 2)], [entered(user, segment)])
    shown = invoke("user", "explain", user, segment, env=segment_api)
    assert shown.exit_code == 0, shown.output
    lines = [line.rstrip() for line in shown.stdout.splitlines()]
    assert lines[0].startswith(f"why {user} is in Pro buyers {user} ({segment}), evaluated at ")
    assert lines[1:4] == ["✓ all  rules",
                          '├── ✓ plan eq "pro"  observed "pro"  rules.all[0]',
                          '└── ✓ {"event":"purchase","count":{"gte":2},"within":"P30D"}  observed 2  rules.all[1]']
    assert lines[4] == (f"entered at {ENTERED_AT.isoformat().replace('+00:00', 'Z')} because event e-2 (purchase): "
                        "rules.all[1] 1 → 2")
    as_json = invoke("user", "explain", user, segment, "--json", env=segment_api)
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["because"] == BECAUSE
    table = invoke("user", "segments", user, env=segment_api)
    assert table.exit_code == 0 and "because" in table.stdout and "event e-2 (purchase)" in table.stdout


def test_amctl_user_explain_of_an_unknown_segment_is_one_line(segment_api: dict[str, str]) -> None:
    missing = str(uuid.uuid4())
    result = invoke("user", "explain", "kim", missing, env=segment_api)
    assert result.exit_code == 1
    assert one_error(result.stderr) == f"error: Segment API: no segment with id '{missing}' (HTTP 404)"
    in_store(segment_api["AM_DATABASE_URL"], [shopper("lea", 1, plan="free")])
    segment = _segment(segment_api, f"Pro {uuid.uuid4().hex[:6]}", {"field": "plan", "operator": "eq",
                                                                    "value": "pro"})
    outside = invoke("user", "explain", "lea", segment, env=segment_api)
    assert outside.exit_code == 0, outside.output
    assert '✗ plan eq "pro"  observed "free"  rules' in outside.stdout and "not a member" in outside.stdout
