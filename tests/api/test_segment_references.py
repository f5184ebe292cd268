"""Segment references in the Segment API: what a rule may refer to (422 with the path), deleting a segment others
refer to (409), preview over the stored memberships, and STATIC members told to the rule job on its feedback topic."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from confluent_kafka import Message
from fastapi.testclient import TestClient

from server.domain.pipeline import StaticMembership, keyed_input
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app
from server.segment_api.references import MAX_REFERENCE_DEPTH, REFERENCE_LOCK
from server.stores.topics import REEVALUATIONS
from tests.api.test_segments import add_profiles, spender
from tests.api.test_static_members import topic_records

pytestmark = pytest.mark.api

RICH = {"field": "totalSpent", "operator": "gt", "value": 100}


@pytest.fixture
def client(service_settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as c:
        yield c


def create(client: TestClient, name: str, rules: dict[str, Any] | None = None, **extra: Any) -> str:
    """A segment: DYNAMIC with `rules` (RICH by default), or as `extra` says (`type="STATIC"`)."""
    body = {"name": name, **extra} if extra.get("type") == "STATIC" else {"name": name, "rules": rules or RICH, **extra}
    response = client.post("/api/segments", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def refused(response: httpx.Response) -> list[tuple[list[Any], str]]:
    """The (location, message) of every problem of a 422."""
    assert response.status_code == 422, response.text
    return [(d["loc"], d["msg"]) for d in response.json()["detail"]]


def test_a_reference_to_a_segment_that_is_not_live_is_refused_with_its_path(client: TestClient) -> None:
    unknown = str(uuid.uuid4())
    answer = client.post("/api/segments", json={"name": "x", "rules": {"all": [{"segment": unknown}]}})
    assert refused(answer) == [(["body", "rules", "all", 0, "segment"], f"rules.all[0].segment: no segment {unknown}")]
    gone = create(client, "gone")
    assert client.delete(f"/api/segments/{gone}").status_code == 204
    vip = create(client, "vip")
    update = client.put(f"/api/segments/{vip}", json={"rules": {"any": [RICH, {"not": {"segment": gone}}]}})
    assert refused(update) == [(["body", "rules", "any", 1, "not", "segment"],
                                f"rules.any[1].not.segment: no segment {gone}")]
    assert client.get(f"/api/segments/{vip}").json()["version"] == 1  # nothing written
    preview = client.post("/api/segments/preview", json={"rules": {"segment": unknown}})
    assert refused(preview) == [(["body", "rules", "segment"], f"rules.segment: no segment {unknown}")]


def test_any_live_segment_may_be_referred_to_dynamic_or_static_active_or_paused(client: TestClient) -> None:
    paused = create(client, "paused", status="PAUSED")
    static = create(client, "static", type="STATIC")
    rules = {"all": [{"segment": paused}, {"not": {"segment": static}}]}
    created = client.post("/api/segments", json={"name": "both", "rules": rules})
    assert created.status_code == 201, created.text
    assert created.json()["rules"] == rules
    # pausing a referenced segment is allowed: its members exit, and the referring rule sees none
    assert client.put(f"/api/segments/{static}", json={"status": "PAUSED"}).status_code == 200


def test_a_segment_cannot_refer_to_itself(client: TestClient) -> None:
    vip = create(client, "VIP")
    answer = client.put(f"/api/segments/{vip}", json={"rules": {"all": [RICH, {"segment": vip}]}})
    assert refused(answer) == [(["body", "rules", "all", 1, "segment"],
                                "rules.all[1].segment: reference cycle VIP → VIP")]


def test_a_reference_that_closes_a_cycle_names_the_segments_in_it(client: TestClient) -> None:
    vip = create(client, "VIP")
    churned = create(client, "Churned", {"not": {"segment": vip}})
    lapsed = create(client, "Lapsed", {"any": [{"segment": churned}, RICH]})
    direct = client.put(f"/api/segments/{vip}", json={"rules": {"all": [{"segment": churned}]}})
    assert refused(direct) == [(["body", "rules", "all", 0, "segment"],
                                "rules.all[0].segment: reference cycle VIP → Churned → VIP")]
    # through two others, under the name the same update gives the segment
    renamed = client.put(f"/api/segments/{vip}", json={"name": "Top", "rules": {"all": [RICH, {"segment": lapsed}]}})
    assert refused(renamed) == [(["body", "rules", "all", 1, "segment"],
                                 "rules.all[1].segment: reference cycle Top → Lapsed → Churned → Top")]
    assert client.get(f"/api/segments/{vip}").json()["name"] == "VIP"
    # the same reference where it closes no cycle is fine
    assert client.put(f"/api/segments/{lapsed}", json={"rules": {"segment": vip}}).status_code == 200


def test_references_nest_at_most_eight_levels_counting_the_segments_above(client: TestClient) -> None:
    chain = [create(client, "level0")]
    for level in range(1, MAX_REFERENCE_DEPTH + 1):  # level8 → level7 → … → level0: eight levels
        chain.append(create(client, f"level{level}", {"segment": chain[-1]}))
    deeper = client.post("/api/segments", json={"name": "level9", "rules": {"all": [{"segment": chain[-1]}]}})
    names = " → ".join(f"level{i}" for i in range(MAX_REFERENCE_DEPTH + 1, -1, -1))
    assert refused(deeper) == [(["body", "rules", "all", 0, "segment"],
                                f"rules.all[0].segment: references nest 9 levels deep, at most 8: {names}")]
    # at the bottom: the eight segments above it count too
    bottom = create(client, "bottom")
    below = client.put(f"/api/segments/{chain[0]}", json={"rules": {"segment": bottom}})
    assert refused(below)[0][1].startswith("rules.segment: references nest 9 levels deep, at most 8: level8 → ")
    preview = client.post("/api/segments/preview", json={"rules": {"segment": chain[-1]}})
    assert refused(preview)[0][1].startswith("rules.segment: references nest 9 levels deep, at most 8: (this rule) → ")
    assert client.post("/api/segments/preview", json={"rules": {"segment": chain[-2]}}).status_code == 200


def test_concurrent_updates_cannot_close_a_cycle_between_them(client: TestClient, database_url: str) -> None:
    first, second = create(client, "first"), create(client, "second")
    answers: dict[str, int] = {}

    def refer(name: str, source: str, target: str) -> None:
        answers[name] = client.put(f"/api/segments/{source}", json={"rules": {"segment": target}}).status_code

    with psycopg.connect(database_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (REFERENCE_LOCK,))  # both writers must wait behind it
        writers = [threading.Thread(target=refer, args=("first", first, second)),
                   threading.Thread(target=refer, args=("second", second, first))]
        for writer in writers:
            writer.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and holder.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())").fetchone() != (2,):
            time.sleep(0.02)  # until both have read nothing yet and wait for the lock
        holder.execute("SELECT pg_advisory_unlock(%s)", (REFERENCE_LOCK,))
        for writer in writers:
            writer.join(timeout=15)
    assert sorted(answers.values()) == [200, 422], answers  # the second one sees the first one's reference
    rules = [client.get(f"/api/segments/{sid}").json()["rules"] for sid in (first, second)]
    assert sum(r == {"segment": other} for r, other in zip(rules, (second, first), strict=True)) == 1


def test_a_segment_others_refer_to_is_not_deleted_until_they_stop(client: TestClient) -> None:
    churned = create(client, "Churned", type="STATIC")
    loyal = create(client, "Loyal", {"not": {"segment": churned}})
    winback = create(client, "Win-back", {"all": [RICH, {"segment": churned}]})
    answer = client.delete(f"/api/segments/{churned}")
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"] == (f"segment 'Churned' is referred to by 'Loyal' ({loyal}), 'Win-back' ({winback}):"
                                       " remove those references first")
    assert client.get(f"/api/segments/{churned}").status_code == 200
    assert client.delete(f"/api/segments/{winback}").status_code == 204  # nobody refers to it
    assert client.put(f"/api/segments/{loyal}", json={"rules": RICH}).status_code == 200
    assert client.delete(f"/api/segments/{churned}").status_code == 204


def test_preview_reads_the_referenced_segments_memberships_from_the_store(client: TestClient,
                                                                           database_url: str) -> None:
    add_profiles(database_url, spender("ann", 500), spender("ben", 500), spender("cid", 5), spender("dan", 500))
    vip = create(client, "vip")
    with psycopg.connect(database_url, autocommit=True) as conn:  # what the rule engine's writer has stored
        for user in ("ann", "ben", "cid"):
            conn.execute("INSERT INTO segment_memberships (segment_id, user_id, segment_version, entered_at)"
                         " VALUES (%s, %s, 1, now())", (vip, user))
    churned = create(client, "churned", type="STATIC")
    assert client.post(f"/api/segments/{churned}/members", json={"add": ["ben"]}).status_code == 200
    rules = {"all": [{"segment": vip}, {"not": {"segment": churned}}]}
    preview = client.post("/api/segments/preview", json={"rules": rules, "sampleSize": 10})
    assert preview.status_code == 200, preview.text
    assert (preview.json()["matching"], preview.json()["scanned"], preview.json()["sample"]) == (2, 4, ["ann", "cid"])
    rich_members = {"all": [{"segment": vip}, RICH]}  # the stored membership and the profile, both
    assert client.post("/api/segments/preview", json={"rules": rich_members}).json()["sample"] == ["ann", "ben"]


def job_records(settings: ServiceSettings, expected: int) -> list[Message]:
    """Every record on the test's rule-job feedback topic (see `topic_records`)."""
    return topic_records(settings, REEVALUATIONS, expected)


def static_records(settings: ServiceSettings, expected: int) -> list[tuple[bytes, StaticMembership]]:
    """The feedback topic's records as the job reads them (each must be a `StaticMembership`), with their keys."""
    read = [(m.key(), keyed_input(orjson.loads(m.value()))) for m in job_records(settings, expected)]
    assert all(isinstance(record, StaticMembership) for _, record in read), read
    return [(key, record) for key, record in read if isinstance(record, StaticMembership)]


def test_static_member_changes_and_a_static_delete_reach_the_rule_job(client: TestClient,
                                                                      service_settings: ServiceSettings) -> None:
    churned = create(client, "churned", type="STATIC")
    members = f"/api/segments/{churned}/members"
    assert client.post(members, json={"add": ["ann", "ben"]}).json()["size"] == 2
    assert client.post(members, json={"add": ["ann"], "remove": ["cid"]}).json()["size"] == 2  # no change: none sent
    assert client.post(members, json={"remove": ["ben"]}).json()["size"] == 1
    assert client.delete(f"/api/segments/{churned}").status_code == 204  # ann, the one member left, leaves it
    records = static_records(service_settings, expected=4)
    seen = sorted((key, r.user_id, r.segment_id, r.change) for key, r in records)
    assert seen == [(b"ann", "ann", churned, "entered"), (b"ann", "ann", churned, "exited"),
                    (b"ben", "ben", churned, "entered"), (b"ben", "ben", churned, "exited")]
    for user in ("ann", "ben"):  # one key, one partition: in the order they were made
        assert [r.change for _, r in records if r.user_id == user] == ["entered", "exited"]


def test_without_the_broker_no_static_change_and_no_static_delete_is_applied(
        client: TestClient, service_settings: ServiceSettings) -> None:
    churned = create(client, "churned", type="STATIC")
    assert client.post(f"/api/segments/{churned}/members", json={"add": ["ann"]}).status_code == 200
    dead = service_settings.model_copy(update={"kafka_bootstrap": "127.0.0.1:1"})
    with TestClient(create_app(dead)) as unreachable:
        added = unreachable.post(f"/api/segments/{churned}/members", json={"add": ["ben"]})
        assert added.status_code == 503 and "kafka unavailable" in added.json()["detail"]
        deleted = unreachable.delete(f"/api/segments/{churned}")
        assert deleted.status_code == 503 and deleted.headers["Retry-After"], deleted.text
        assert "nothing was deleted" in deleted.json()["detail"]
    assert client.get(f"/api/segments/{churned}").status_code == 200
    page = client.get(f"/api/segments/{churned}/members").json()["items"]
    assert [m["userId"] for m in page] == ["ann"]
    assert [(r.user_id, r.change) for _, r in static_records(service_settings, expected=1)] == [("ann", "entered")]
