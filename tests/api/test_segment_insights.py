"""Segment insights over HTTP (overlap, hourly history, trait breakdown), against the real PostgreSQL and broker."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from server.domain.membership import MembershipChange
from server.domain.profile import Profile
from server.domain.timeutil import format_timestamp, parse_timestamp
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app
from server.stores.postgres import Database
from server.stores.postgres_profiles import PostgresProfileStore

pytestmark = pytest.mark.api
HOUR = timedelta(hours=1)


@pytest.fixture
def client(service_settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as c:
        yield c


def static_segment(client: TestClient, name: str, members: Sequence[str] = ()) -> str:
    """A STATIC segment with `members`, made through the public API."""
    created = client.post("/api/segments", json={"name": name, "type": "STATIC"})
    assert created.status_code == 201, created.text
    segment_id = str(created.json()["id"])
    if members:
        changed = client.post(f"/api/segments/{segment_id}/members", json={"add": list(members)})
        assert changed.status_code == 200 and changed.json()["size"] == len(members), changed.text
    return segment_id


def in_store(settings: ServiceSettings, changes: Sequence[MembershipChange] = (),
             profiles: Sequence[Profile] = ()) -> None:
    """Write memberships (with the ledger times chosen) and profiles as the rule engine's writer does."""
    async def write() -> None:
        db = Database(settings.database_conninfo, 2, 2)
        await db.open(5)
        try:
            store = PostgresProfileStore(db)
            await store.put_profiles(list(profiles))
            assert await store.apply_changes(list(changes)) == len(changes)
        finally:
            await db.close()

    asyncio.run(write())


def problem(response: Any) -> tuple[list[Any], str]:
    """The one (loc, msg) of a 422."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and len(detail) >= 1, detail
    return detail[0]["loc"], detail[0]["msg"]


# -- overlap ------------------------------------------------------------------------------------------------------

def test_overlap_of_three_segments_counts_sizes_the_triple_and_every_pair(client: TestClient) -> None:
    a = static_segment(client, "a", ["ann", "ben", "cid", "dan"])
    b = static_segment(client, "b", ["ben", "cid", "dan", "eve"])
    c = static_segment(client, "c", ["dan", "eve", "fay", "gus"])
    static_segment(client, "elsewhere", ["ann", "zoe"])  # other segments' members change nothing
    response = client.post("/api/segments/overlap", json={"segmentIds": [a, b, c]})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "sizes": {a: 4, b: 4, c: 4},
        "intersection": 1,  # dan
        "pairs": [{"a": a, "b": b, "intersection": 3},  # ben, cid, dan
                  {"a": a, "b": c, "intersection": 1},  # dan
                  {"a": b, "b": c, "intersection": 2}],  # dan, eve
    }
    two = client.post("/api/segments/overlap", json={"segmentIds": [c, a.upper()]}).json()  # any UUID spelling
    assert two == {"sizes": {c: 4, a: 4}, "intersection": 1, "pairs": [{"a": c, "b": a, "intersection": 1}]}


def test_overlap_of_an_empty_segment_is_zeros(client: TestClient) -> None:
    full, empty = static_segment(client, "full", ["ann"]), static_segment(client, "empty")
    assert client.post("/api/segments/overlap", json={"segmentIds": [full, empty]}).json() == {
        "sizes": {full: 1, empty: 0}, "intersection": 0, "pairs": [{"a": full, "b": empty, "intersection": 0}]}


@pytest.mark.parametrize(("ids", "loc", "words"), [
    (lambda a, b: [a], ["body", "segmentIds"], "at least 2"),
    (lambda a, b: [a, b, *(str(uuid.uuid4()) for _ in range(9))], ["body", "segmentIds"], "at most 10"),
    (lambda a, b: [a, a], ["body", "segmentIds", 1], "named twice (also segmentIds[0])"),
    (lambda a, b: [a, b.upper(), b], ["body", "segmentIds", 2], "named twice (also segmentIds[1])"),
    (lambda a, b: [a, b, "not-a-uuid"], ["body", "segmentIds", 2], "'not-a-uuid' is not a segment id (a UUID)"),
    (lambda a, b: [a, 7], ["body", "segmentIds", 1], "valid string"),
    (lambda a, b: a, ["body", "segmentIds"], "valid list"),
])
def test_overlap_refuses_a_bad_body_naming_the_field(client: TestClient, ids: Callable[[str, str], Any],
                                                     loc: list[Any], words: str) -> None:
    a, b = static_segment(client, "one"), static_segment(client, "two")
    got_loc, msg = problem(client.post("/api/segments/overlap", json={"segmentIds": ids(a, b)}))
    assert got_loc == loc and words in msg


def test_overlap_refuses_a_missing_or_extra_field(client: TestClient) -> None:
    assert problem(client.post("/api/segments/overlap", json={}))[0] == ["body", "segmentIds"]
    a, b = static_segment(client, "one"), static_segment(client, "two")
    assert problem(client.post("/api/segments/overlap", json={"segmentIds": [a, b], "x": 1}))[0] == ["body", "x"]


def test_overlap_of_an_unknown_or_deleted_segment_is_a_404_naming_it(client: TestClient) -> None:
    known, gone = static_segment(client, "known", ["ann"]), static_segment(client, "gone", ["ann"])
    unknown = str(uuid.uuid4())
    response = client.post("/api/segments/overlap", json={"segmentIds": [known, unknown]})
    assert response.status_code == 404 and unknown in response.json()["detail"]
    assert client.delete(f"/api/segments/{gone}").status_code == 204
    response = client.post("/api/segments/overlap", json={"segmentIds": [gone, known]})
    assert response.status_code == 404 and gone in response.json()["detail"]


# -- history ------------------------------------------------------------------------------------------------------

def change(user: str, segment: str, kind: str, at: datetime) -> MembershipChange:
    return MembershipChange(user, segment, kind, at, 1, source="static")  # type: ignore[arg-type]


def test_history_counts_each_hour_and_derives_sizes_from_the_ledger(client: TestClient,
                                                                    service_settings: ServiceSettings) -> None:
    sid = static_segment(client, "history")
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - 6 * HOUR
    m = timedelta(minutes=1)
    in_store(service_settings, [
        change("ann", sid, "entered", base + 10 * m), change("ben", sid, "entered", base + 11 * m),
        change("cid", sid, "entered", base + 12 * m),
        change("ann", sid, "exited", base + HOUR + 20 * m), change("dan", sid, "entered", base + HOUR + 30 * m),
        change("ben", sid, "exited", base + HOUR + 40 * m),
        change("eve", sid, "entered", base + 3 * HOUR + 5 * m),  # after the range: undone from the current size
    ])
    start, end = base + 30 * m, base + 3 * HOUR  # from inside an hour, to on an hour's start
    response = client.get(f"/api/segments/{sid}/history",
                          params={"from": format_timestamp(start), "to": format_timestamp(end)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["segmentId"], body["bucket"]) == (sid, "PT1H")
    assert (parse_timestamp(body["from"]), parse_timestamp(body["to"])) == (start, end)
    points = [(parse_timestamp(p["at"]), p["entered"], p["exited"], p["size"]) for p in body["points"]]
    assert points == [(base, 3, 0, 3),  # ann, ben, cid
                      (base + HOUR, 1, 2, 2),  # cid, dan
                      (base + 2 * HOUR, 0, 0, 2)]  # a quiet hour is there, with zeros
    assert client.get(f"/api/segments/{sid}/stats").json()["size"] == 3  # cid, dan, eve now


def test_history_defaults_to_the_last_24_hours_and_takes_naive_times_as_utc(
        client: TestClient, service_settings: ServiceSettings) -> None:
    sid = static_segment(client, "recent", ["ann", "ben"])
    body = client.get(f"/api/segments/{sid}/history").json()
    start, end = parse_timestamp(body["from"]), parse_timestamp(body["to"])
    assert end - start == timedelta(hours=24)
    first = start.replace(minute=0, second=0, microsecond=0)
    assert [parse_timestamp(p["at"]) for p in body["points"]] == \
        [first + i * HOUR for i in range(math.ceil((end - first) / HOUR))]
    assert body["points"][-1]["size"] == 2 and sum(p["entered"] for p in body["points"]) == 2
    assert body["points"][0]["size"] == 0
    naive = client.get(f"/api/segments/{sid}/history", params={"from": "2026-01-01T00:00:00",
                                                               "to": "2026-01-01T02:00:00"}).json()
    assert [p["at"] for p in naive["points"]] == ["2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"]


@pytest.mark.parametrize(("params", "loc", "words"), [
    ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, ["query", "from"], "must be before to"),
    ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, ["query", "from"], "must be before to"),
    ({"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:01Z"}, ["query", "from"], "at most 31 days"),
    ({"from": "2020-01-01T00:00:00Z"}, ["query", "from"], "at most 31 days"),  # to: now
    ({"from": "2999-01-01T00:00:00Z"}, ["query", "from"], "must be before to"),
    ({"to": "yesterday"}, ["query", "to"], "ISO-8601"),
    ({"from": "2026-01-01T00:00:00 01:00"}, ["query", "from"], "%2B"),  # an unencoded '+' arrives as a space
    ({"to": "0001-01-01T00:00:00Z"}, ["query", "to"], "between 1970 and 9999"),
])
def test_history_refuses_a_bad_range_naming_the_parameter(client: TestClient, params: dict[str, str],
                                                          loc: list[str], words: str) -> None:
    sid = static_segment(client, "ranged")
    got_loc, msg = problem(client.get(f"/api/segments/{sid}/history", params=params))
    assert got_loc == loc and words in msg


def test_history_of_31_days_is_allowed_and_unknown_segments_are_404(client: TestClient) -> None:
    sid = static_segment(client, "month")
    body = client.get(f"/api/segments/{sid}/history",
                      params={"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}).json()
    assert len(body["points"]) == 31 * 24
    assert body["points"][-1]["at"] == "2026-01-31T23:00:00Z"
    assert client.get(f"/api/segments/{uuid.uuid4()}/history").status_code == 404


# -- breakdown ----------------------------------------------------------------------------------------------------

def test_breakdown_counts_values_most_common_first_with_other_and_missing(
        client: TestClient, service_settings: ServiceSettings) -> None:
    members = ["ann", "ben", "cid", "dan", "eve", "fay", "gus", "hal"]
    sid = static_segment(client, "countries", members)
    in_store(service_settings, profiles=[
        Profile("ann", {"country": "de", "address": {"city": "Berlin"}}),
        Profile("ben", {"country": "de", "address": {"city": "Berlin"}}),
        Profile("cid", {"country": "fr", "address": {"city": "Paris"}}),
        Profile("dan", {"country": "us", "address": "Paris"}),  # not an object: no city in it
        Profile("eve", {"plan": "pro"}),  # no country
        Profile("gus", {"country": None}),  # null: missing, as for the rule language's `exists`
        Profile("hal", {"country": "de"}),
        Profile("zoe", {"country": "de"}),  # not a member
    ])  # fay has no profile at all
    body = client.get(f"/api/segments/{sid}/breakdown", params={"trait": "country", "limit": 2}).json()
    assert body == {"segmentId": sid, "trait": "country", "members": 8,
                    "values": [{"value": "de", "count": 3}, {"value": "fr", "count": 1}],  # fr before us: a tie
                    "other": 1, "missing": 3}  # eve, fay, gus
    nested = client.get(f"/api/segments/{sid}/breakdown", params={"trait": "address.city"}).json()
    assert (nested["values"], nested["other"], nested["missing"]) == \
        ([{"value": "Berlin", "count": 2}, {"value": "Paris", "count": 1}], 0, 5)


def test_breakdown_keeps_values_of_other_types_apart(client: TestClient, service_settings: ServiceSettings) -> None:
    sid = static_segment(client, "seats", ["ann", "ben", "cid", "dan"])
    in_store(service_settings, profiles=[Profile("ann", {"seats": 3}), Profile("ben", {"seats": 3}),
                                         Profile("cid", {"seats": "3"}), Profile("dan", {"seats": True})])
    body = client.get(f"/api/segments/{sid}/breakdown", params={"trait": "seats"}).json()
    assert body["values"] == [{"value": 3, "count": 2}, {"value": "3", "count": 1}, {"value": True, "count": 1}]


@pytest.mark.parametrize(("params", "loc"), [
    ({"trait": "country!"}, ["query", "trait"]),
    ({"trait": "address..city"}, ["query", "trait"]),
    ({"trait": ".country"}, ["query", "trait"]),
    ({"trait": "x" * 129}, ["query", "trait"]),
    ({}, ["query", "trait"]),
    ({"trait": "country", "limit": 0}, ["query", "limit"]),
    ({"trait": "country", "limit": 101}, ["query", "limit"]),
])
def test_breakdown_refuses_a_bad_trait_or_limit(client: TestClient, params: dict[str, Any], loc: list[str]) -> None:
    sid = static_segment(client, "traits")
    assert problem(client.get(f"/api/segments/{sid}/breakdown", params=params))[0] == loc


def test_breakdown_of_an_unknown_segment_is_a_404(client: TestClient) -> None:
    assert client.get(f"/api/segments/{uuid.uuid4()}/breakdown", params={"trait": "x" * 128}).status_code == 404


# -- scopes -------------------------------------------------------------------------------------------------------

def test_insights_need_the_read_scope_like_the_other_segment_reads(service_settings: ServiceSettings) -> None:
    keys = {"read": "read-key-insights-0001", "write": "write-key-insights-0001"}
    settings = service_settings.model_copy(
        update={"api_keys": SecretStr(",".join(f"{key}:{scope}" for scope, key in keys.items()))})
    with TestClient(create_app(settings)) as keyed:
        writer = {"X-API-Key": keys["write"]}
        a = keyed.post("/api/segments", json={"name": "a", "type": "STATIC"}, headers=writer).json()["id"]
        b = keyed.post("/api/segments", json={"name": "b", "type": "STATIC"}, headers=writer).json()["id"]
        calls = [("POST", "/api/segments/overlap", {"json": {"segmentIds": [a, b]}}),
                 ("GET", f"/api/segments/{a}/history", {}),
                 ("GET", f"/api/segments/{a}/breakdown", {"params": {"trait": "country"}})]
        for method, path, extra in calls:
            assert keyed.request(method, path, **extra).status_code == 401, path  # type: ignore[arg-type]
            answered = keyed.request(method, path, headers={"X-API-Key": keys["read"]}, **extra)  # type: ignore[arg-type]
            assert answered.status_code == 200, (path, answered.text)
        operation = keyed.get("/openapi.json").json()["paths"]["/api/segments/overlap"]["post"]
        assert operation["x-required-scope"] == "read"
