"""The suppression list's HTTP API and `amctl suppression`, against the real PostgreSQL, broker and an SMTP server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from server.communication_api.app import create_app as communication_app
from server.runtime.settings import ServiceSettings
from tests.api.conftest import Sink
from tests.api.test_campaigns import campaign, counts, eventually, put_profiles, static_segment
from tests.cli import invoke, json_of, one_error, run

pytestmark = pytest.mark.api

KEYS = {"read": "read-key-2c8e6a1f4b93", "write": "write-key-7d3b9e0a5c12", "admin": "admin-key-9f1a4c7e2d58"}


def add(api: TestClient, address: str, **fields: Any) -> Any:
    return api.post("/api/suppressions", json={"address": address, **fields})


def seed(database_url: str, entries: list[tuple[str, str, str | None, str | None]]) -> None:
    """Entries as the platform writes them: (address, reason, campaign id, user id)."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO email_suppressions (address, reason, campaign_id, user_id)"
                        " VALUES (%s, %s, %s, %s)", entries)


def test_an_address_is_added_read_and_removed_as_it_is_stored(api: TestClient) -> None:
    created = add(api, "  Ann.Lee+News@Example.COM ", detail="asked by phone, ticket 4411")
    assert created.status_code == 201, created.text
    entry = created.json()
    assert entry == {"address": "ann.lee+news@example.com", "reason": "manual", "campaignId": None, "userId": None,
                     "detail": "asked by phone, ticket 4411", "createdAt": entry["createdAt"]}
    assert created.headers["Location"] == "/api/suppressions/ann.lee+news@example.com"
    read = api.get("/api/suppressions/ANN.LEE+NEWS@example.com")
    assert read.status_code == 200 and read.json() == entry
    assert api.get("/api/suppressions/%20ann.lee+news@example.com%20").json() == entry

    again = add(api, "ann.lee+news@EXAMPLE.com", reason="unsubscribed", detail="by mail")
    assert again.status_code == 200, again.text
    assert again.json() == entry  # the first reason and detail stay

    assert api.delete("/api/suppressions/Ann.Lee+News@example.com").status_code == 204
    gone = api.get("/api/suppressions/ann.lee+news@example.com")
    assert gone.status_code == 404 and gone.json()["detail"] == "ann.lee+news@example.com is not suppressed"
    assert api.delete("/api/suppressions/ann.lee+news@example.com").status_code == 404
    assert add(api, "ann.lee+news@example.com", reason="unsubscribed").status_code == 201  # new again


def test_an_address_with_a_slash_is_reached_percent_encoded(api: TestClient) -> None:
    assert add(api, "dept/sales@example.com").status_code == 201
    created = api.get("/api/suppressions/Dept%2FSales@example.com")
    assert created.status_code == 200 and created.json()["address"] == "dept/sales@example.com"
    assert api.delete("/api/suppressions/dept%2Fsales@example.com").status_code == 204
    assert api.get("/api/suppressions/dept%2Fsales@example.com").status_code == 404


def test_the_list_pages_in_address_order_and_filters_by_reason(api: TestClient, database_url: str) -> None:
    campaign_id = "6a1e7c1e-3f0b-4d8a-9a53-0b7d2f1c4e11"
    seed(database_url, [("dan@example.com", "hard_bounce", campaign_id, "dan"),
                        ("bea@example.com", "opted_out", None, "bea"),
                        ("eve@example.com", "unsubscribed", campaign_id, "eve")])
    for address in ("cid@example.com", "abe@example.com"):
        assert add(api, address).status_code == 201

    first = api.get("/api/suppressions", params={"limit": 2})
    assert first.status_code == 200, first.text
    body = first.json()
    assert [e["address"] for e in body["items"]] == ["abe@example.com", "bea@example.com"]
    assert body["total"] == 5 and body["nextCursor"] == "bea@example.com"
    assert body["items"][1] | {"createdAt": None} == {"address": "bea@example.com", "reason": "opted_out",
                                                      "campaignId": None, "userId": "bea", "detail": None,
                                                      "createdAt": None}
    second = api.get("/api/suppressions", params={"limit": 2, "cursor": body["nextCursor"]}).json()
    assert [e["address"] for e in second["items"]] == ["cid@example.com", "dan@example.com"]
    last = api.get("/api/suppressions", params={"limit": 2, "cursor": second["nextCursor"]}).json()
    assert [e["address"] for e in last["items"]] == ["eve@example.com"] and last["nextCursor"] is None
    exact = api.get("/api/suppressions", params={"limit": 5}).json()
    assert len(exact["items"]) == 5 and exact["nextCursor"] is None  # a full last page says it is the last

    bounced = api.get("/api/suppressions", params={"reason": "hard_bounce"}).json()
    assert [(e["address"], e["campaignId"], e["userId"]) for e in bounced["items"]] == [
        ("dan@example.com", campaign_id, "dan")]
    assert bounced["total"] == 1 and bounced["nextCursor"] is None
    manual = api.get("/api/suppressions", params={"reason": "manual"}).json()
    assert [e["address"] for e in manual["items"]] == ["abe@example.com", "cid@example.com"] and manual["total"] == 2


@pytest.mark.parametrize(("body", "loc", "says"), [
    ({"address": "nobody"}, ["body", "address"], "needs the form name@example.com"),
    ({"address": "@example.com"}, ["body", "address"], "needs the form"),
    ({"address": "ann@"}, ["body", "address"], "needs the form"),
    ({"address": "ann@localhost"}, ["body", "address"], "not a domain name"),
    ({"address": "ann@example..com"}, ["body", "address"], "not a domain name"),
    ({"address": "ann@-example.com"}, ["body", "address"], "not a domain name"),
    ({"address": "ann lee@example.com"}, ["body", "address"], "a space"),
    ({"address": "Ann <ann@example.com>"}, ["body", "address"], "a space"),
    ({"address": "ann@example.com,bob@example.com"}, ["body", "address"], "< > , ;"),
    ({"address": f"{'a' * 65}@example.com"}, ["body", "address"], "longer than 64"),
    ({"address": f"{'a' * 60}@{'b' * 63}.{'c' * 63}.{'d' * 63}.com"}, ["body", "address"], "at most 254 characters"),
    ({"address": ""}, ["body", "address"], "at least 1 character"),
    ({}, ["body", "address"], "Field required"),
    ({"address": "ann@example.com", "reason": "hard_bounce"}, ["body", "reason"], "'manual' or 'unsubscribed'"),
    ({"address": "ann@example.com", "reason": "opted_out"}, ["body", "reason"], "'manual' or 'unsubscribed'"),
    ({"address": "ann@example.com", "reason": "gone"}, ["body", "reason"], "'manual' or 'unsubscribed'"),
    ({"address": "ann@example.com", "detail": "two\nlines"}, ["body", "detail"], "pattern"),
    ({"address": "ann@example.com", "detail": "x" * 1001}, ["body", "detail"], "at most 1000"),
    ({"address": "ann@example.com", "campaignId": "x"}, ["body", "campaignId"], "Extra inputs"),
])
def test_a_bad_entry_is_a_422_naming_the_field(api: TestClient, body: dict[str, Any], loc: list[str],
                                               says: str) -> None:
    refused = api.post("/api/suppressions", json=body)
    assert refused.status_code == 422, refused.text
    problem = refused.json()["detail"][0]
    assert problem["loc"] == loc and says in problem["msg"], problem
    assert api.get("/api/suppressions").json()["total"] == 0


def test_the_address_in_the_path_and_the_query_are_checked_too(api: TestClient) -> None:
    for method in ("GET", "DELETE"):
        bad = api.request(method, "/api/suppressions/nobody")
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["path", "address"], bad.text
        long = api.request(method, f"/api/suppressions/{'a' * 64}@{'b' * 190}.com")
        assert long.status_code == 422 and "at most 254" in long.json()["detail"][0]["msg"]
    for params, field in (({"reason": "bounced"}, "reason"), ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"),
                          ({"cursor": ""}, "cursor")):
        refused = api.get("/api/suppressions", params=params)
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["query", field], refused.text


@pytest.fixture
def keyed_api(service_settings: ServiceSettings) -> Iterator[TestClient]:
    inline = ",".join(f"{key}:{scope}" for scope, key in KEYS.items())
    with TestClient(communication_app(service_settings.model_copy(update={"api_keys": SecretStr(inline)}))) as client:
        yield client


def test_reads_need_read_adding_needs_write_and_removing_needs_admin(keyed_api: TestClient) -> None:
    def status(method: str, path: str, scope: str | None, **kwargs: Any) -> int:
        headers = {"X-API-Key": KEYS[scope]} if scope else {}
        return keyed_api.request(method, path, headers=headers, **kwargs).status_code

    assert status("GET", "/api/suppressions", None) == 401
    assert status("POST", "/api/suppressions", "read", json={"address": "ann@example.com"}) == 403
    assert status("POST", "/api/suppressions", "write", json={"address": "ann@example.com"}) == 201
    assert status("GET", "/api/suppressions", "read") == 200
    assert status("GET", "/api/suppressions/ann@example.com", "read") == 200
    assert status("DELETE", "/api/suppressions/ann@example.com", "write") == 403
    assert status("GET", "/api/suppressions/ann@example.com", "read") == 200  # still suppressed
    refused = keyed_api.delete("/api/suppressions/ann@example.com", headers={"X-API-Key": KEYS["write"]})
    assert "needs scope 'admin'" in refused.json()["detail"]
    assert status("DELETE", "/api/suppressions/ann@example.com", "admin") == 204
    assert keyed_api.get("/openapi.json").json()["paths"]["/api/suppressions/{address}"]["delete"][
        "x-required-scope"] == "admin"


def test_a_campaign_skips_an_address_suppressed_by_hand_and_mails_it_once_removed(
        api: TestClient, worker: TestClient, segments: TestClient, sink: Sink, database_url: str) -> None:
    put_profiles(database_url, {"ann": {"email": "Ann@Example.com"}, "bob": {"email": "bob@example.com"}})
    sid = static_segment(segments, ["ann", "bob"])
    assert add(api, "ann@example.COM", detail="asked at the counter").status_code == 201

    first = campaign(api, sid)["id"]
    eventually(lambda: counts(api, first)["sent"] == 1 and counts(api, first)["skipped"] == 1, "one mail, one skip")
    skipped = api.get(f"/api/campaigns/{first}/deliveries", params={"status": "skipped"}).json()["items"]
    assert [(d["userId"], d["reason"]) for d in skipped] == [("ann", "suppressed")]
    assert [m.rcpt_to for m in sink.mails(first)] == [["bob@example.com"]]

    assert api.delete("/api/suppressions/ann@example.com").status_code == 204
    second = campaign(api, sid)["id"]
    eventually(lambda: counts(api, second)["sent"] == 2, "both mailed")
    assert sorted(m.rcpt_to[0] for m in sink.mails(second)) == ["Ann@Example.com", "bob@example.com"]
    assert counts(api, second)["skipped"] == 0


# -- amctl suppression, against the Communication API as a process ---------------------------------


def test_suppression_commands_add_show_list_and_remove(services: dict[str, str]) -> None:
    added = invoke("suppression", "add", " Cli.Ann@Example.com", "--detail", "[b]by phone[/b]", env=services)
    assert added.exit_code == 0, added.output
    assert "cli.ann@example.com" in added.stdout and "[b]by phone[/b]" in added.stdout  # text as it is
    assert added.stderr == ""
    entry = json_of(invoke("suppression", "add", "cli.bob@example.com", "--reason", "unsubscribed", "--json",
                           env=services))
    assert (entry["address"], entry["reason"], entry["detail"]) == ("cli.bob@example.com", "unsubscribed", None)

    again = invoke("suppression", "add", "CLI.BOB@example.com", "--json", env=services)
    assert json_of(again) == entry  # stdout is the entry alone; the note goes to stderr
    assert "cli.bob@example.com was already suppressed (unsubscribed, since " in again.stderr
    assert "its entry is unchanged" in again.stderr

    shown = invoke("suppression", "get", "cli.ann@EXAMPLE.com", env=services)
    assert shown.exit_code == 0, shown.output
    rows = {cells[0]: cells[1] for cells in ([c.strip() for c in line.split("│")[1:-1]]
                                             for line in shown.stdout.splitlines() if line.startswith("│"))}
    assert rows == {"reason": "manual", "createdAt": rows["createdAt"], "campaignId": "", "userId": "",
                    "detail": "[b]by phone[/b]"} and "cli.ann@example.com" in shown.stdout
    assert json_of(invoke("suppression", "get", "cli.bob@example.com", "--json", env=services)) == entry

    page = json_of(invoke("suppression", "list", "--limit", "1", "--json", env=services))
    assert [e["address"] for e in page["items"]] == ["cli.ann@example.com"] and page["total"] == 2
    assert page["nextCursor"] == "cli.ann@example.com"
    table = invoke("suppression", "list", "--limit", "1", env=services)
    assert table.exit_code == 0, table.output
    assert "suppressed addresses (2 in all)" in table.stdout and "│ cli.ann@example.com │ manual" in table.stdout
    assert table.stdout.rstrip().endswith("more: --cursor cli.ann@example.com")
    rest = json_of(invoke("suppression", "list", "--cursor", "cli.ann@example.com", "--json", env=services))
    assert [e["address"] for e in rest["items"]] == ["cli.bob@example.com"] and rest["nextCursor"] is None
    only = invoke("suppression", "list", "--reason", "unsubscribed", env=services)
    assert "(1 unsubscribed in all)" in only.stdout and "cli.ann" not in only.stdout

    removed = run("suppression", "remove", "Cli.Ann@example.com", env=services)  # the installed executable
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == "removed Cli.Ann@example.com from the suppression list: campaigns mail it again"
    assert json_of(invoke("suppression", "list", "--json", env=services))["total"] == 1


@pytest.mark.parametrize(("args", "line"), [
    (["get", "cli.nobody@example.com"],
     "error: Communication API: cli.nobody@example.com is not suppressed (HTTP 404)"),
    (["remove", "cli.nobody@example.com"],
     "error: Communication API: cli.nobody@example.com is not suppressed (HTTP 404)"),
    (["add", "nobody"],
     "error: Communication API: address: 'nobody' is not an email address: it needs the form name@example.com "
     "(HTTP 422)"),
    (["add", "cli.x@example.com", "--reason", "hard_bounce"],
     "error: Communication API: reason: Input should be 'manual' or 'unsubscribed' (HTTP 422)"),
    (["list", "--reason", "bounced"],
     "error: Communication API: query.reason: Input should be 'unsubscribed', 'hard_bounce', 'opted_out' or "
     "'manual' (HTTP 422)"),
    (["get", "nobody"],
     "error: Communication API: path.address: 'nobody' is not an email address: it needs the form "
     "name@example.com (HTTP 422)"),
])
def test_a_refused_suppression_command_is_one_line(services: dict[str, str], args: list[str], line: str) -> None:
    refused = run("suppression", *args, env=services)
    assert refused.returncode == 1 and refused.stdout == ""
    assert one_error(refused.stderr) == line
