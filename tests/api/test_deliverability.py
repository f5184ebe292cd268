"""Email that mailbox providers accept: one-click unsubscribe, the suppression list, frequency caps, quiet hours,
and campaigns that end COMPLETED, against a real PostgreSQL, broker and SMTP server."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from server.communication_api.app import create_app as communication_app
from server.domain.email import EmailJob
from server.email_worker.app import create_app as worker_app
from server.runtime.secrets import new_key
from server.runtime.settings import ServiceSettings
from server.stores.deliveries import ClaimResult, DeliveryEntry, DeliveryLedger, DeliveryStatus
from server.stores.postgres import Database
from tests.api.conftest import Sink
from tests.api.test_campaigns import campaign, counts, eventually, put_profiles, static_segment

pytestmark = pytest.mark.api

PUBLIC_BASE = "https://mail.example.test/am"
LINK = re.compile(re.escape(PUBLIC_BASE) + r"(/unsubscribe/[A-Za-z0-9_-]+)")
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
def settings(campaign_settings: ServiceSettings) -> ServiceSettings:
    return campaign_settings.model_copy(update={"public_base_url": PUBLIC_BASE + "/"})  # the trailing / is dropped


def link_in(body: str) -> str:
    """The unsubscribe path in a rendered body (the template prints `{{ unsubscribe_url }}`)."""
    match = LINK.search(body)
    assert match, f"no unsubscribe link in {body!r}"
    return match.group(1)


def deliveries(api: TestClient, campaign_id: str, status: str | None = None) -> dict[str, dict[str, Any]]:
    params = {"status": status} if status else {}
    items = api.get(f"/api/campaigns/{campaign_id}/deliveries", params=params).json()["items"]
    return {d["userId"]: d for d in items}


def completed(api: TestClient, campaign_id: str) -> dict[str, Any]:
    eventually(lambda: api.get(f"/api/campaigns/{campaign_id}").json()["status"] == "COMPLETED",
               f"campaign {campaign_id} COMPLETED", timeout_s=60)
    return dict(api.get(f"/api/campaigns/{campaign_id}").json())


def suppressed(database_url: str) -> dict[str, tuple[str, str | None, str | None]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT address, reason, campaign_id::text, user_id FROM email_suppressions").fetchall()
    return {address: (reason, campaign_id, user_id) for address, reason, campaign_id, user_id in rows}


def test_one_click_unsubscribe_stops_the_next_campaign_and_one_token_cannot_unsubscribe_another(
        api: TestClient, worker: TestClient, segments: TestClient, sink: Sink, database_url: str) -> None:
    put_profiles(database_url, {"ann": {"email": "Ann@Example.com"}, "bob": {"email": "bob@example.com"}})
    sid = static_segment(segments, ["ann", "bob"])
    first = campaign(api, sid, body="Hi. Unsubscribe: {{ unsubscribe_url }}")
    assert completed(api, first["id"])["counts"]["sent"] == 2
    links = {m.rcpt_to[0]: link_in(m.body) for m in sink.mails(first["id"])}
    ann, bob = links["Ann@Example.com"], links["bob@example.com"]
    for mail in sink.mails(first["id"]):  # both headers at the sink, naming the link the body shows
        url, mailto = str(mail.header("List-Unsubscribe")).split(", ")
        assert url == f"<{PUBLIC_BASE}{links[mail.rcpt_to[0]]}>" and mailto.startswith("<mailto:unsubscribe@")
        assert mail.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    assert ann != bob and "ann" not in ann.lower() and "bob" not in bob  # no user id in clear

    page = api.get(ann)  # what a person (or a link scanner) sees: a button, and nothing unsubscribed yet
    assert page.status_code == 200 and '<form method="post">' in page.text and "A**@Example.com" in page.text
    assert suppressed(database_url) == {}
    assert api.post(ann, data={}).status_code == 400  # a POST that is not the one-click body does nothing
    tampered = ann[:-2] + ("AA" if not ann.endswith("AA") else "BB")
    assert api.post(tampered, data=ONE_CLICK).status_code == 404
    foreign = communication_app(api.app.state.settings.model_copy(update={"secrets_key": SecretStr(new_key())}))
    assert foreign.state.unsubscribe_links.tokens.enabled  # another installation's key opens nothing of ours
    with pytest.raises(ValueError, match="not an unsubscribe token"):
        foreign.state.unsubscribe_links.tokens.read(ann.rsplit("/", 1)[1])

    done = api.post(ann, data=ONE_CLICK)  # RFC 8058: form-encoded List-Unsubscribe=One-Click, no login
    assert done.status_code == 200 and "no more campaign mail" in done.text
    assert suppressed(database_url) == {"ann@example.com": ("unsubscribed", first["id"], "ann")}
    assert api.post(ann, data=ONE_CLICK).status_code == 200  # pressing it twice is fine

    second = campaign(api, sid)
    body = completed(api, second["id"])
    assert body["counts"] == {"queued": 0, "sent": 1, "failed": 0, "skipped": 1, "deferred": 0, "cancelled": 0}
    assert deliveries(api, second["id"])["ann"]["reason"] == "unsubscribed"
    assert [m.rcpt_to for m in sink.mails(second["id"])] == [["bob@example.com"]]


def test_multipart_one_click_is_accepted_and_needs_no_api_key(settings: ServiceSettings, sink: Sink,
                                                              segments: TestClient, database_url: str) -> None:
    keyed = settings.model_copy(update={"api_keys": SecretStr("writer-key-0123456789abcdef:write")})
    put_profiles(database_url, {"cid": {"email": "cid@example.com"}})
    sid = static_segment(segments, ["cid"])
    with TestClient(communication_app(keyed)) as api, TestClient(worker_app(settings)):
        key = {"X-API-Key": "writer-key-0123456789abcdef"}
        created = api.post("/api/campaigns", headers=key, json={
            "name": "c", "segmentId": sid, "template": {"subject": "s", "body": "{{ unsubscribe_url }}"}}).json()
        eventually(lambda: api.get(f"/api/campaigns/{created['id']}", headers=key).json()["status"] == "COMPLETED",
                   "sent")
        path = link_in(sink.mails(created["id"])[0].body)
        assert api.get("/api/campaigns").status_code == 401  # the rest of the API still needs a key
        answer = api.post(path, files={"List-Unsubscribe": (None, "One-Click")})  # multipart/form-data
        assert answer.status_code == 200, answer.text
    assert suppressed(database_url)["cid@example.com"][0] == "unsubscribed"


def test_an_unsubscribe_after_the_fan_out_and_before_delivery_is_honoured(
        api: TestClient, segments: TestClient, sink: Sink, database_url: str, settings: ServiceSettings) -> None:
    put_profiles(database_url, {"dee": {"email": "dee@example.com"}, "eve": {"email": "eve@example.com"}})
    sid = static_segment(segments, ["dee", "eve"])
    earlier = campaign(api, sid, body="{{ unsubscribe_url }}")
    with TestClient(worker_app(settings)):
        completed(api, earlier["id"])
    dee = next(link_in(m.body) for m in sink.mails(earlier["id"]) if m.rcpt_to == ["dee@example.com"])
    later = campaign(api, sid)  # fanned out while no worker runs: both jobs wait on email-jobs
    eventually(lambda: api.get(f"/api/campaigns/{later['id']}").json()["audienceSize"] == 2, "the fan-out")
    assert api.post(dee, data=ONE_CLICK).status_code == 200
    with TestClient(worker_app(settings)):
        body = completed(api, later["id"])
    assert body["counts"]["sent"] == 1 and deliveries(api, later["id"])["dee"]["reason"] == "unsubscribed"
    assert [m.rcpt_to for m in sink.mails(later["id"])] == [["eve@example.com"]]


def test_hard_bounces_and_opt_outs_land_on_the_suppression_list(
        api: TestClient, worker: TestClient, segments: TestClient, database_url: str) -> None:
    put_profiles(database_url, {"bad": {"email": "nobody@bounce.example"}, "off": {"email": "off@example.com",
                                                                               "emailOptOut": "yes"}})
    sid = static_segment(segments, ["bad", "off"])
    first = campaign(api, sid)
    assert completed(api, first["id"])["counts"] == {
        "queued": 0, "sent": 0, "failed": 1, "skipped": 1, "deferred": 0, "cancelled": 0}
    assert suppressed(database_url) == {"nobody@bounce.example": ("hard_bounce", first["id"], "bad"),
                                        "off@example.com": ("opted_out", first["id"], "off")}
    second = campaign(api, sid)
    assert completed(api, second["id"])["counts"]["skipped"] == 2  # the bounce is not tried again
    assert {u: d["reason"] for u, d in deliveries(api, second["id"]).items()} == {
        "bad": "hard bounce", "off": "opted out (emailOptOut)"}


def test_the_frequency_cap_counts_mails_from_every_campaign(
        api: TestClient, worker: TestClient, segments: TestClient, sink: Sink, database_url: str) -> None:
    users = {u: {"email": f"{u}@example.com"} for u in ("fay", "gus", "hal", "ivy")}
    put_profiles(database_url, users)
    for members in (["fay", "gus", "hal"], ["fay", "gus"]):  # fay and gus get two mails, hal one, ivy none
        completed(api, campaign(api, static_segment(segments, members))["id"])
    capped = campaign(api, static_segment(segments, list(users)), frequencyCap={"max": 2, "within": "P1D"})
    assert capped["frequencyCap"] == {"max": 2, "within": "P1D"}
    body = completed(api, capped["id"])
    assert body["counts"] == {"queued": 0, "sent": 2, "failed": 0, "skipped": 2, "deferred": 0, "cancelled": 0}
    reasons = {u: d["reason"] for u, d in deliveries(api, capped["id"]).items()}
    assert reasons == {"fay": "frequency cap: 2 mails within P1D", "gus": "frequency cap: 2 mails within P1D",
                       "hal": None, "ivy": None}
    assert sorted(m.rcpt_to[0] for m in sink.mails(capped["id"])) == ["hal@example.com", "ivy@example.com"]


def test_two_capped_campaigns_at_once_never_exceed_the_cap(
        api: TestClient, segments: TestClient, sink: Sink, database_url: str, settings: ServiceSettings) -> None:
    users = [f"u{i:02d}" for i in range(40)]
    put_profiles(database_url, {u: {"email": f"{u}@example.com"} for u in users})
    sid = static_segment(segments, users)
    with TestClient(worker_app(settings)):
        completed(api, campaign(api, sid)["id"])  # everyone has had one mail today
    cap = {"max": 2, "within": "PT1H"}
    racing = [campaign(api, sid, frequencyCap=cap)["id"] for _ in range(2)]  # both fan out while no worker runs
    eventually(lambda: all(api.get(f"/api/campaigns/{c}").json()["audienceSize"] == 40 for c in racing), "fan-outs")
    with TestClient(worker_app(settings.model_copy(update={"email_concurrency": 16}))), \
            TestClient(worker_app(settings.model_copy(update={"email_concurrency": 16}))):  # two workers, too
        bodies = [completed(api, c) for c in racing]
    assert sum(b["counts"]["sent"] for b in bodies) == 40 and sum(b["counts"]["skipped"] for b in bodies) == 40
    per_user: dict[str, int] = {}
    for c in racing:
        for m in sink.mails(c):
            per_user[m.rcpt_to[0]] = per_user.get(m.rcpt_to[0], 0) + 1
    assert sorted(per_user.values()) == [1] * 40  # each got exactly one of the two: two mails in all, the cap


def test_the_installation_default_cap_applies_unless_a_campaign_says_none(
        service_settings: ServiceSettings, segments: TestClient) -> None:
    capped = service_settings.model_copy(update={"email_frequency_cap_max": 3, "email_frequency_cap_within": "P7D"})
    sid = static_segment(segments, ["ann"])
    with TestClient(communication_app(capped)) as api:
        assert campaign(api, sid)["frequencyCap"] == {"max": 3, "within": "P7D"}
        assert campaign(api, sid, frequencyCap=None)["frequencyCap"] is None
        assert campaign(api, sid, frequencyCap={"max": 1, "within": "PT12H"})["frequencyCap"] == {
            "max": 1, "within": "PT43200S"}


def _quiet_window_around(now: datetime, zone_offset_hours: int) -> dict[str, str]:
    """A two-hour quiet window in a fixed-offset zone (Etc/GMT-N is UTC+N) that holds `now` there."""
    local = now + timedelta(hours=zone_offset_hours)
    return {"start": (local - timedelta(hours=1)).strftime("%H:%M"),
            "end": (local + timedelta(hours=1)).strftime("%H:%M")}


def test_quiet_hours_defer_recipients_by_their_own_time_zone(
        api: TestClient, worker: TestClient, segments: TestClient, sink: Sink, database_url: str) -> None:
    now = datetime.now(UTC)
    window = _quiet_window_around(now, 5)  # it is quiet now in UTC+5, and not in UTC-7 (12 hours away)
    put_profiles(database_url, {
        "east": {"email": "east@example.com", "timezone": "Etc/GMT-5"},
        "west": {"email": "west@example.com", "timezone": "Etc/GMT+7"},
        "none": {"email": "none@example.com"},  # the campaign's zone
        "odd": {"email": "odd@example.com", "timezone": "Not/AZone"},  # not a zone: the campaign's too
    })
    sid = static_segment(segments, ["east", "west", "none", "odd"])
    cid = campaign(api, sid, quietHours={**window, "timezone": "Etc/GMT-5"})["id"]
    eventually(lambda: counts(api, cid)["sent"] == 1 and counts(api, cid)["deferred"] == 3, "one sent, three held")
    body = api.get(f"/api/campaigns/{cid}").json()
    assert body["status"] == "SENDING" and body["completedAt"] is None  # not done: three mails are waiting
    assert body["quietHours"] == {**window, "timezone": "Etc/GMT-5"}
    held = deliveries(api, cid, "deferred")
    assert sorted(held) == ["east", "none", "odd"] and all(d["reason"].startswith("quiet hours: held until")
                                                           for d in held.values())
    assert [m.rcpt_to for m in sink.mails(cid)] == [["west@example.com"]]
    cancelled = api.post(f"/api/campaigns/{cid}/cancel").json()  # a cancel reaches the held ones too
    assert cancelled["counts"]["deferred"] == 0 and cancelled["counts"]["cancelled"] == 3


def test_a_deferred_mail_goes_when_its_quiet_hours_end(database_url: str, segments: TestClient,
                                                       api: TestClient) -> None:
    """The ledger's side of quiet hours on a clock the test sets: held at 22:00, due at 08:00, sent then."""
    sid = static_segment(segments, ["ann"])
    cid = campaign(api, sid, schedule={"at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()},
                   quietHours={"start": "21:00", "end": "08:00", "timezone": "Europe/Paris"})["id"]
    evening = datetime(2026, 12, 2, 21, 0, tzinfo=UTC)  # 22:00 in Paris
    morning = datetime(2026, 12, 3, 7, 0, tzinfo=UTC)  # 08:00 in Paris

    async def scenario() -> list[Any]:
        db = Database(database_url, 2, 2.0)
        await db.open(5)
        try:
            ledger = DeliveryLedger(db)
            job = EmailJob(cid, "ann", "ann@example.com", "s", "b", evening)
            await ledger.record(cid, [DeliveryEntry("ann", "ann@example.com", DeliveryStatus.QUEUED)])
            held = await ledger.claim(job, now=evening)
            early = await ledger.due_deferred(morning - timedelta(minutes=1))
            due = await ledger.due_deferred(morning)
            again = await ledger.due_deferred(morning)  # published once a minute at most
            sent = await ledger.claim(due[0], now=morning)
            return [held.result, held.reason, early, [j.user_id for j in due], again, sent.result]
        finally:
            await db.close()

    held, reason, early, due, again, sent = asyncio.run(scenario())
    assert held is ClaimResult.DEFERRED and reason == "quiet hours: held until 2026-12-03T07:00:00Z"
    assert early == [] and due == ["ann"] and again == [] and sent is ClaimResult.SEND


@pytest.mark.parametrize(("change", "loc", "message"), [
    ({"frequencyCap": {"max": 0, "within": "P1D"}}, ["body", "frequencyCap", "max"], "greater than or equal to 1"),
    ({"frequencyCap": {"max": 2, "within": "one day"}}, ["body", "frequencyCap", "within"], "ISO-8601 duration"),
    ({"frequencyCap": {"max": 2, "within": "PT10S"}}, ["body", "frequencyCap", "within"], "between"),
    ({"quietHours": {"start": "25:00", "end": "08:00"}}, ["body", "quietHours", "start"], "pattern"),
    ({"quietHours": {"start": "21:00", "end": "08:00", "timezone": "Mars/Olympus"}},
     ["body", "quietHours", "timezone"], "IANA"),
    ({"quietHours": {"start": "08:00", "end": "08:00"}}, ["body", "quietHours"], "same time"),
    ({"template": {"subject": "s", "body": "b", "bodyHtml": "{% for %}"}}, ["body", "template", "bodyHtml"],
     "template.bodyHtml"),
])
def test_bad_sending_rules_are_refused_naming_the_field(api: TestClient, segments: TestClient,
                                                        change: dict[str, Any], loc: list[str], message: str) -> None:
    body = {"name": "c", "segmentId": static_segment(segments, ["ann"]),
            "template": {"subject": "s", "body": "b"}, **change}
    answer = api.post("/api/campaigns", json=body)
    assert answer.status_code == 422, answer.text
    problem = answer.json()["detail"][0]
    assert problem["loc"] == loc and message in problem["msg"], problem
    assert api.get("/api/campaigns").json()["total"] == 0


def test_a_campaign_to_1000_members_completes_with_counts_that_add_up(
        api: TestClient, worker: TestClient, segments: TestClient, sink: Sink, database_url: str) -> None:
    users = [f"m{i:04d}" for i in range(1000)]
    traits = {u: ({"email": f"{u}@example.com"} if i % 20 else {"email": f"{u}@example.com", "emailOptOut": True})
              if i % 50 else {"firstName": "no address"} for i, u in enumerate(users)}
    put_profiles(database_url, traits)
    cid = campaign(api, static_segment(segments, users), body="Hello {{ userId }}")["id"]
    body = completed(api, cid)
    n = body["counts"]
    assert body["audienceSize"] == 1000 and body["completedAt"] >= body["createdAt"]
    assert n["queued"] == n["deferred"] == n["failed"] == n["cancelled"] == 0
    # every 50th has no address, every other 20th opted out
    assert n["skipped"] == 20 + 40 and n["sent"] == 940 and sum(n.values()) == 1000
    assert len(sink.mails(cid)) == 940


def test_an_on_enter_campaign_stays_active_and_a_fanned_out_one_with_nothing_to_send_completes(
        api: TestClient, segments: TestClient) -> None:
    sid = static_segment(segments, ["nobody-has-a-profile"])
    assert campaign(api, sid, schedule="on_enter")["status"] == "ACTIVE"
    body = completed(api, campaign(api, sid)["id"])  # every recipient skipped at the fan-out: no worker needed
    assert body["counts"]["skipped"] == 1 and body["audienceSize"] == 1


def test_unknown_tokens_get_a_page_not_an_error(api: TestClient) -> None:
    for path in (f"/unsubscribe/{uuid.uuid4().hex}", "/unsubscribe/" + "x" * 600, "/unsubscribe/%00%ff"):
        for answer in (api.get(path), api.post(path, data=ONE_CLICK)):
            assert answer.status_code in (404, 422) and "stack" not in answer.text.lower(), (path, answer.text)
