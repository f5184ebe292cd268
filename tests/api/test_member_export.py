"""`GET /api/segments/{id}/members/export` against the real PostgreSQL: both formats, traits, quoting and
formula neutralisation, ids beyond ASCII, paging past one page, an empty segment and bad parameters."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg.types.json import Jsonb
from pydantic import SecretStr

from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app
from server.segment_api.export import EXPORT_PAGE

pytestmark = pytest.mark.api

ENTERED = datetime(2026, 11, 25, 3, 16, 15, 929556, tzinfo=UTC)
TRAITS = {
    "alice": {"plan": "pro", "note": 'says "hi",\nthen leaves', "address": {"city": "Graz", "zip": "8010"}},
    "bob": {"plan": "=HYPERLINK(\"http://x\",\"y\")", "note": "@SUM(A1)", "score": -5, "vip": True},
    "zoë": {"plan": "-2+3", "note": "+cmd|' /C calc'!A0", "address": {"city": "Zürich"}},
}
MEMBERS = ["+4917612345", "alice", "bob", "carol", "zoë"]  # carol has no profile


@pytest.fixture
def client(service_settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as c:
        yield c


def seed(client: TestClient, database_url: str, name: str, members: list[str],
         traits: dict[str, dict[str, Any]] | None = None) -> str:
    """A STATIC segment with `members` and their profiles, written straight into the store (as the rule
    engine's writer would: the API takes only ASCII ids)."""
    sid = str(client.post("/api/segments", json={"name": name, "type": "STATIC"}).json()["id"])
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO segment_memberships (segment_id, user_id, segment_version, entered_at, source)"
                        " VALUES (%s, %s, 1, %s, 'static')", [(sid, user, ENTERED) for user in members])
        cur.executemany("INSERT INTO user_profiles (user_id, profile) VALUES (%s, %s)",
                        [(user, Jsonb({"userId": user, "traits": t})) for user, t in (traits or {}).items()])
    return sid


def export(client: TestClient, sid: str, **params: str) -> Any:
    response = client.get(f"/api/segments/{sid}/members/export", params=params)
    assert response.status_code == 200, response.text
    return response


def test_csv_has_a_header_quotes_what_needs_it_and_neutralises_formulas(client: TestClient,
                                                                         database_url: str) -> None:
    sid = seed(client, database_url, "Beta Testers (Ö)", MEMBERS, TRAITS)
    response = export(client, sid, format="csv", traits="plan,note,address.city,address,score,vip")
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="beta-testers-o-members.csv"'
    assert response.headers["x-total-count"] == "5"
    assert response.content.count(b"\r\n") == 6  # header and five members (alice's note keeps its \n, quoted)
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["userId", "enteredAt", "segmentVersion", "source", "traits.plan", "traits.note",
                       "traits.address.city", "traits.address", "traits.score", "traits.vip"]
    by_user = {row[0]: row for row in rows[1:]}
    assert [row[0] for row in rows[1:]] == ["'+4917612345", "alice", "bob", "carol", "zoë"]  # user-id order
    assert by_user["alice"][:7] == ["alice", "2026-11-25T03:16:15.929556Z", "1", "static", "pro",
                                    'says "hi",\nthen leaves', "Graz"]
    assert orjson.loads(by_user["alice"][7]) == {"city": "Graz", "zip": "8010"} and by_user["alice"][8:] == ["", ""]
    assert by_user["bob"][4:] == ["'=HYPERLINK(\"http://x\",\"y\")", "'@SUM(A1)", "", "", "-5", "true"]
    assert by_user["zoë"][4:7] == ["'-2+3", "'+cmd|' /C calc'!A0", "Zürich"]
    assert by_user["carol"][4:] == [""] * 6  # no profile: every trait empty


def test_jsonl_is_one_object_per_member_with_traits_as_json(client: TestClient, database_url: str) -> None:
    sid = seed(client, database_url, "beta", MEMBERS, TRAITS)
    response = export(client, sid, format="jsonl", traits="plan,address")
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["content-disposition"] == 'attachment; filename="beta-members.jsonl"'
    lines = response.content.split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(MEMBERS) + 1
    records = [orjson.loads(line) for line in lines[:-1]]
    assert [r["userId"] for r in records] == MEMBERS  # as they are: no formula neutralisation outside CSV
    assert records[1] == {"userId": "alice", "enteredAt": "2026-11-25T03:16:15.929556Z", "segmentVersion": 1,
                          "source": "static", "traits.plan": "pro", "traits.address": {"city": "Graz", "zip": "8010"}}
    assert records[3] == {"userId": "carol", "enteredAt": "2026-11-25T03:16:15.929556Z", "segmentVersion": 1,
                          "source": "static", "traits.plan": None, "traits.address": None}
    no_traits = export(client, sid, format="jsonl").content.split(b"\n")[0]
    assert orjson.loads(no_traits) == {"userId": "+4917612345", "enteredAt": "2026-11-25T03:16:15.929556Z",
                                       "segmentVersion": 1, "source": "static"}


def test_every_member_once_in_order_across_pages(client: TestClient, database_url: str) -> None:
    members = [f"u{i:05d}" for i in range(2 * EXPORT_PAGE + 500)]
    sid = seed(client, database_url, "many", members, {"u01000": {"plan": "x"}})
    response = export(client, sid, traits="plan")
    rows = list(csv.reader(io.StringIO(response.content.decode())))[1:]
    assert [row[0] for row in rows] == members and response.headers["x-total-count"] == str(len(members))
    assert [row[0] for row in rows if row[4]] == ["u01000"]  # the second page's traits are the second page's


def test_an_empty_segment_is_a_header_only(client: TestClient) -> None:
    sid = client.post("/api/segments", json={"name": "nobody yet", "type": "STATIC"}).json()["id"]
    csv_body = export(client, sid, traits="plan")
    assert csv_body.content == b"userId,enteredAt,segmentVersion,source,traits.plan\r\n"
    assert csv_body.headers["x-total-count"] == "0"
    assert export(client, sid, format="jsonl").content == b""


BAD = [
    ({"format": "xml"}, "format", "'csv' or 'jsonl'"),
    ({"traits": ",".join(f"t{i}" for i in range(51))}, "traits", "at most 50"),
    ({"traits": "plan,,score"}, "traits", "not a trait path"),
    ({"traits": "address..city"}, "traits", "not a trait path"),
    ({"traits": "a\tb"}, "traits", "not a trait path"),
    ({"traits": "x" * 129}, "traits", "not a trait path"),
    ({"traits": "plan,score,plan"}, "traits", "named more than once: plan"),
]


def test_bad_parameters_are_a_422_naming_them(client: TestClient) -> None:
    sid = client.post("/api/segments", json={"name": "s", "type": "STATIC"}).json()["id"]
    for params, field, message in BAD:
        response = client.get(f"/api/segments/{sid}/members/export", params=params)
        assert response.status_code == 422, (params, response.text)
        [problem] = response.json()["detail"]
        assert problem["loc"] == ["query", field] and message in problem["msg"], (params, problem)


def test_an_unknown_segment_is_a_404(client: TestClient) -> None:
    assert client.get(f"/api/segments/{uuid.uuid4()}/members/export").status_code == 404
    assert client.get("/api/segments/not-a-uuid/members/export").status_code == 404


def test_the_export_needs_the_read_scope(service_settings: ServiceSettings) -> None:
    read, write = "read-key-3f9a1c7e5b20", "write-key-8d2e6b0a4c91"
    keyed = service_settings.model_copy(update={"api_keys": SecretStr(f"{read}:read,{write}:write")})
    with TestClient(create_app(keyed)) as client:
        sid = client.post("/api/segments", json={"name": "keyed", "type": "STATIC"},
                          headers={"X-API-Key": write}).json()["id"]
        path = f"/api/segments/{sid}/members/export"
        assert client.get(path).status_code == 401
        assert client.get(path, headers={"X-API-Key": read}).status_code == 200
