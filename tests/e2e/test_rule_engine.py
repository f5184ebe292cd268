"""The rule engine end to end on a real local stack: assignment, backfill, windows, deletes."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from confluent_kafka import Producer

from flinkjob.feeder import SETTLE_MARGIN, SETTLE_S
from server.domain.pipeline import ReevaluationRequest
from server.stores.topics import (
    REEVALUATIONS,
    RULE_DEFINITIONS,
    SEGMENT_MEMBERSHIP,
    SEGMENT_RULES,
    USER_EVENTS,
    USER_PROFILES,
)
from tests.contracts import membership_validator
from tests.e2e.stack import Stack, eventually, read_topic

pytestmark = pytest.mark.e2e

HIGH_VALUE = {"conditions": [{"field": "totalSpent", "operator": "gt", "value": 1000}]}


def segment_ids(stack: Stack, user: str) -> set[str]:
    return {s["segmentId"] for s in stack.segments.get(f"/api/users/{user}/segments").json()["segments"]}


def create(stack: Stack, rules: dict[str, Any], name: str | None = None) -> str:
    response = stack.segments.post("/api/segments", json={"name": name or f"seg {uuid.uuid4().hex[:8]}",
                                                          "type": "DYNAMIC", "rules": rules})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def send(stack: Stack, user: str, event_type: str, **properties: Any) -> None:
    response = stack.events.post("/api/events", json={"userId": user, "eventType": event_type,
                                                      "properties": properties})
    assert response.status_code == 202, response.text


def test_seed_flow_high_value_user(running_stack: Stack) -> None:
    segment = create(running_stack, HIGH_VALUE, name=f"High Value Users {uuid.uuid4().hex[:6]}")
    user = f"user-{uuid.uuid4().hex[:8]}"
    time.sleep(0.5)  # let the definition reach the job (rule propagation is measured in the bench)
    started = time.monotonic()
    send(running_stack, user, "purchase", amount=1500, category="electronics")
    eventually(lambda: segment in segment_ids(running_stack, user), what="user in High Value Users")
    elapsed = time.monotonic() - started
    assert elapsed < 15
    profile = running_stack.segments.get(f"/api/users/{user}/profile").json()
    assert profile["totalSpent"] == 1500 and profile["traits"]["category"] == "electronics"
    small = f"small-{uuid.uuid4().hex[:8]}"
    send(running_stack, small, "purchase", amount=20)
    eventually(lambda: running_stack.segments.get(f"/api/users/{small}/profile").status_code == 200)
    assert segment not in segment_ids(running_stack, small)
    # what the rule engine wrote on segment-membership, its readiness probes' echoes included, is what the
    # published contract describes
    mine = lambda m: user.encode() in (m.value() or b"")  # noqa: E731
    records = read_topic(running_stack, SEGMENT_MEMBERSHIP, expected=2,
                         keep=lambda m: mine(m) or (m.value() or b"").startswith(b'{"probe"'))
    values = [orjson.loads(m.value()) for m in records]
    for value in values:
        membership_validator().validate(value)
    assert [(v["userId"], v["segmentId"], v["change"]) for v in values if "probe" not in v] == [
        (user, segment, "entered")]
    assert any("probe" in v for v in values)
    assert all(m.key() in (None, user.encode()) for m in records if mine(m))  # no key yet, or the user's


def test_new_and_changed_rules_apply_to_existing_users(running_stack: Stack) -> None:
    user = f"fan-{uuid.uuid4().hex[:8]}"
    send(running_stack, user, "page_view", favourite=f"band-{user}")
    eventually(lambda: running_stack.segments.get(f"/api/users/{user}/profile").status_code == 200)
    segment = create(running_stack, {"field": "favourite", "operator": "eq", "value": f"band-{user}"})
    eventually(lambda: segment in segment_ids(running_stack, user), what="backfill of a new segment")
    # tighten the rule: the existing member must exit without sending any event
    stricter = {"all": [{"field": "favourite", "operator": "eq", "value": f"band-{user}"},
                        {"field": "eventCount", "operator": "gte", "value": 5}]}
    assert running_stack.segments.put(f"/api/segments/{segment}", json={"rules": stricter}).status_code == 200
    eventually(lambda: segment not in segment_ids(running_stack, user), what="exit after the rule changed")
    stats = running_stack.segments.get(f"/api/segments/{segment}/stats").json()
    assert stats["size"] == 0 and stats["entered"]["lastHour"] == 1 and stats["exited"]["lastHour"] == 1
    # a user's changes share one partition, so every consumer reads them in the order they happened
    records = read_topic(running_stack, SEGMENT_MEMBERSHIP, expected=2,
                         keep=lambda m: user.encode() in (m.value() or b""))
    assert len({m.partition() for m in records}) == 1
    assert [orjson.loads(m.value())["change"] for m in records] == ["entered", "exited"]


def test_deleted_segment_members_exit(running_stack: Stack) -> None:
    user = f"del-{uuid.uuid4().hex[:8]}"
    segment = create(running_stack, {"field": "marker", "operator": "eq", "value": user})
    time.sleep(0.5)
    send(running_stack, user, "page_view", marker=user)
    eventually(lambda: segment in segment_ids(running_stack, user))
    assert running_stack.segments.delete(f"/api/segments/{segment}").status_code == 204
    eventually(lambda: segment not in segment_ids(running_stack, user), what="exit after delete")


def test_windowed_rule_expires_without_new_events(running_stack: Stack) -> None:
    user = f"burst-{uuid.uuid4().hex[:8]}"
    segment = create(running_stack, {"all": [{"event": "purchase", "count": {"gte": 2}, "within": "PT3S"},
                                             {"field": "burst", "operator": "eq", "value": user}]})
    time.sleep(0.5)
    send(running_stack, user, "purchase", amount=5, burst=user)
    send(running_stack, user, "purchase", amount=5, burst=user)
    eventually(lambda: segment in segment_ids(running_stack, user), what="entered on two purchases")
    entered = time.monotonic()
    eventually(lambda: segment not in segment_ids(running_stack, user), timeout_s=10, what="exit after the window")
    assert time.monotonic() - entered > 1.5  # it stayed a member while the purchases were inside the window


def send_at(stack: Stack, user: str, event_type: str, days_ago: float, **properties: Any) -> None:
    at = datetime.now(UTC) - timedelta(days=days_ago)
    response = stack.events.post("/api/events", json={"userId": user, "eventType": event_type,
                                                      "timestamp": at.isoformat(), "properties": properties})
    assert response.status_code == 202, response.text


def test_a_rule_written_later_sees_the_lookback_through_backfill(running_stack: Stack) -> None:
    """No live rule looks back further than seconds (this module's windowed rule is PT3S), yet a P28D rule
    created after purchases 24-25 days old matches through backfill: history is kept for the lookback."""
    marker = uuid.uuid4().hex[:8]
    shopper, lapsed = f"shoes-{marker}", f"lapsed-{marker}"
    for days in (25, 24):
        send_at(running_stack, shopper, "purchase", days, amount=60, category="shoes", marker=marker)
        send_at(running_stack, lapsed, "purchase", days + 4.5, amount=60, category="shoes", marker=marker)
    send_at(running_stack, shopper, "purchase", 23, amount=500, category="books", marker=marker)
    for user in (shopper, lapsed):
        eventually(lambda u=user: running_stack.segments.get(f"/api/users/{u}/profile").json().get(  # type: ignore[misc]
            "eventCount") == (3 if u == shopper else 2), what=f"{user}'s purchases applied")
    mine = {"field": "marker", "operator": "eq", "value": marker}
    twice = create(running_stack, {"all": [mine, {"event": "purchase", "count": {"gte": 2}, "within": "P28D",
                                                  "where": {"field": "category", "operator": "eq", "value": "shoes"}}]})
    spenders = create(running_stack, {"all": [mine, {"event": "purchase", "within": "P28D",
                                                     "avg": {"field": "amount", "gte": 200}}]})
    eventually(lambda: {twice, spenders} <= segment_ids(running_stack, shopper), what="backfill over the lookback")
    time.sleep(1)  # the lapsed buyer's purchases are 28.5-29.5 days old: outside P28D, so never a member
    assert not {twice, spenders} & segment_ids(running_stack, lapsed)


def test_filters_aggregates_and_last_occurrence_live(running_stack: Stack) -> None:
    marker = uuid.uuid4().hex[:8]
    user = f"buyer-{marker}"
    mine = {"field": "marker", "operator": "eq", "value": marker}
    lapsed = create(running_stack, {"all": [mine, {"event": "purchase",
                                                   "last": {"before": "-P20D", "after": "-P90D"}}]})
    big = create(running_stack, {"all": [mine, {"event": "purchase", "max": {"field": "amount", "gte": 100},
                                                "between": ["P60D", "P1D"]}]})
    time.sleep(0.5)
    send_at(running_stack, user, "purchase", 22, amount=150, marker=marker)
    eventually(lambda: {lapsed, big} <= segment_ids(running_stack, user), what="entered lapsed buyers and big buyers")
    send(running_stack, user, "purchase", amount=10, marker=marker)  # bought again: no longer lapsed
    eventually(lambda: lapsed not in segment_ids(running_stack, user), what="exit from lapsed buyers")
    assert big in segment_ids(running_stack, user)  # today's purchase is outside the 60..1-day span


def test_preview_counts_match_what_the_job_assigns(running_stack: Stack) -> None:
    marker = uuid.uuid4().hex[:8]
    amounts = [50, 400, 900, 1200, 2500, 700, 1800]
    for i, amount in enumerate(amounts):
        send(running_stack, f"pv-{marker}-{i}", "purchase", amount=amount, cohort=marker)
    rules = {"all": [{"field": "cohort", "operator": "eq", "value": marker},
                     {"field": "totalSpent", "operator": "gte", "value": 800}]}
    eventually(lambda: running_stack.segments.post("/api/segments/preview", json={"rules": rules}).json()["scanned"]
               and all(running_stack.segments.get(f"/api/users/pv-{marker}-{i}/profile").status_code == 200
                       for i in range(len(amounts))), what="every profile stored")
    preview = running_stack.segments.post("/api/segments/preview", json={"rules": rules, "sampleSize": 100}).json()
    assert preview["matching"] == 4
    segment = create(running_stack, rules)
    eventually(lambda: running_stack.segments.get(f"/api/segments/{segment}/stats").json()["size"]
               == preview["matching"], what="the job assigned what the preview counted")
    members = running_stack.segments.get(f"/api/segments/{segment}/members").json()["items"]
    assert sorted(m["userId"] for m in members) == sorted(preview["sample"])


def job_metric(stack: Stack, name: str) -> float:
    for line in stack.rule_engine.get("/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


def test_the_jobs_own_counters_are_served_on_the_rule_engines_metrics(running_stack: Stack) -> None:
    before = job_metric(running_stack, "am_rule_engine_events_processed_total")
    evaluated_before = job_metric(running_stack, "am_rule_engine_evaluation_seconds_count")
    user = f"metrics-{uuid.uuid4().hex[:8]}"
    for amount in (10, 20, 30):
        send(running_stack, user, "purchase", amount=amount)
    # the counters are read from Flink every few seconds, each refresh possibly adding earlier tests'
    # records too: wait until both have counted at least these three
    eventually(lambda: job_metric(running_stack, "am_rule_engine_events_processed_total") >= before + 3
               and job_metric(running_stack, "am_rule_engine_evaluation_seconds_count") >= evaluated_before + 3,
               what="three more events counted and evaluated by the job")
    assert job_metric(running_stack, "am_rule_engine_job_running") == 1.0
    assert job_metric(running_stack, "am_rule_engine_evaluation_seconds_sum") > 0
    assert job_metric(running_stack, "am_rule_engine_last_checkpoint_timestamp_seconds") > time.time() - 600


# Unreadable on every topic: not JSON, a lone surrogate, NaN, not an object, a field of the wrong type.
GARBAGE = [b"not json", b'{"userId": "u\\ud800", "eventType": "purchase"}', b'{"userId": "x", "amount": NaN}',
           b"[1]", b'{"userId": "x", "eventCount": "many"}']


def metric(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return 0.0


def test_records_that_cannot_be_read_are_skipped_and_counted_and_the_pipeline_goes_on(running_stack: Stack) -> None:
    job = running_stack.rule_engine.get("/actuator/health").json()["components"]["flinkJob"]["details"]["jobId"]
    counters = {(running_stack.rule_engine, "am_rule_engine_records_rejected_total"): 3 * len(GARBAGE),
                (running_stack.rule_engine, "am_profile_writer_records_rejected_total"): 2 * len(GARBAGE),
                (running_stack.rule_engine, "am_rule_feeder_records_rejected_total"): len(GARBAGE) + 1,
                (running_stack.campaigns, "am_on_enter_records_rejected_total"): len(GARBAGE)}
    before = {key: metric(*key) for key in counters}
    producer = Producer({"bootstrap.servers": f"127.0.0.1:{running_stack.env['AMCTL_PORT_KAFKA']}", "linger.ms": 5})
    for topic in (USER_EVENTS, REEVALUATIONS, RULE_DEFINITIONS, SEGMENT_RULES, SEGMENT_MEMBERSHIP, USER_PROFILES):
        for value in GARBAGE:
            producer.produce(topic, value, key=b"garbage")
    producer.produce(SEGMENT_RULES, None, key=b"not-a-segment")  # a tombstone of no segment
    assert producer.flush(10) == 0
    for (client, name), added in counters.items():
        eventually(lambda c=client, n=name, a=added: metric(c, n) == before[(c, n)] + a, timeout_s=30,
                   what=f"{name} counted {added} more")

    segment = create(running_stack, HIGH_VALUE)
    time.sleep(0.5)
    user = f"after-garbage-{uuid.uuid4().hex[:8]}"
    send(running_stack, user, "purchase", amount=1500)
    eventually(lambda: segment in segment_ids(running_stack, user), what="a membership after the garbage")
    health = running_stack.rule_engine.get("/actuator/health").json()
    assert health["status"] == "UP" and health["components"]["flinkJob"]["details"]["jobId"] == job
    flink = httpx.get(f"http://127.0.0.1:{running_stack.env['AMCTL_PORT_FLINK_UI']}/jobs/{job}/exceptions").json()
    assert flink["exceptionHistory"]["entries"] == []  # the job never failed (and restarted) on any of it
    assert running_stack.campaigns.get("/actuator/health").json()["status"] == "UP"


def reevaluated(stack: Stack, segment: str, version: int, quiet_s: float = 2.0, expected: int = 0) -> list[str]:
    """The users the feeder asked the job to re-evaluate for this version of the segment (both passes)."""
    wanted = segment.encode()
    requests = [ReevaluationRequest.from_json(orjson.loads(m.value()))
                for m in read_topic(stack, REEVALUATIONS, keep=lambda m: wanted in (m.value() or b""),
                                    expected=expected, quiet_s=quiet_s)]
    return sorted(r.user_id for r in requests if any(d.id == segment and d.version == version for d in r.segments))


def test_backfill_asks_only_members_and_users_who_match_the_new_rule(running_stack: Stack) -> None:
    marker = uuid.uuid4().hex[:8]
    rich, mid, poor = f"rich-{marker}", f"mid-{marker}", [f"poor-{marker}-{i}" for i in range(3)]
    for user, amount in [(rich, 1500), (mid, 500)] + [(p, 20) for p in poor]:
        send(running_stack, user, "purchase", amount=amount, cohort=marker)
    eventually(lambda: all(running_stack.segments.get(f"/api/users/{u}/profile").status_code == 200
                           for u in (rich, mid, *poor)), what="every profile stored")
    time.sleep(SETTLE_MARGIN.total_seconds() + 0.5)  # written before the settle pass's window: only its filter asks
    mine = {"field": "cohort", "operator": "eq", "value": marker}
    segment = create(running_stack, {"all": [mine, {"field": "totalSpent", "operator": "gt", "value": 400}]})
    eventually(lambda: segment in segment_ids(running_stack, rich) and segment in segment_ids(running_stack, mid),
               what="the matching users entered")
    asked = reevaluated(running_stack, segment, 1, quiet_s=SETTLE_S + 1)
    assert [u for u in asked if marker in u] == sorted([mid, rich])  # never the three who do not match
    scanned = running_stack.segments.post("/api/segments/preview", json={"rules": mine}).json()["scanned"]
    assert len(asked) <= scanned - len(poor)  # the old way asked every stored profile
    assert all(segment not in segment_ids(running_stack, p) for p in poor)

    stricter = {"all": [mine, {"field": "totalSpent", "operator": "gt", "value": 1000}]}
    assert running_stack.segments.put(f"/api/segments/{segment}", json={"rules": stricter}).status_code == 200
    eventually(lambda: segment not in segment_ids(running_stack, mid), what="the former member exited")
    assert segment in segment_ids(running_stack, rich)
    assert [u for u in reevaluated(running_stack, segment, 2) if marker in u] == sorted([mid, rich])  # its members


def test_a_user_whose_stored_profile_lags_the_job_still_enters_through_the_settle_pass(running_stack: Stack) -> None:
    """The user's matching event reaches the job before the segment exists, and its profile reaches the store only
    after the backfill's scan passed the user (a transaction holds the user's row, so the writer waits): the scan
    sees the old profile, which does not match; the settle pass asks every user written since, and the job, which
    has the new profile, decides."""
    marker = uuid.uuid4().hex[:8]
    lagging, steady = f"lag-{marker}", f"ok-{marker}"  # in this order: the scan passes `lagging` first
    send(running_stack, lagging, "page_view", cohort=marker, tier="silver")
    send(running_stack, steady, "page_view", cohort=marker, tier="gold")
    eventually(lambda: all(running_stack.segments.get(f"/api/users/{u}/profile").status_code == 200
                           for u in (lagging, steady)), what="both profiles stored")
    with psycopg.connect(running_stack.database_url) as held:
        held.execute("SELECT 1 FROM user_profiles WHERE user_id = %s FOR UPDATE", (lagging,))  # the writer waits
        send(running_stack, lagging, "page_view", cohort=marker, tier="gold")
        read_topic(running_stack, USER_PROFILES, expected=1, quiet_s=0.1, keep=lambda m: lagging.encode() in (
            m.value() or b"") and orjson.loads(m.value()).get("eventCount") == 2)  # the job applied it
        segment = create(running_stack, {"all": [{"field": "cohort", "operator": "eq", "value": marker},
                                                 {"field": "tier", "operator": "eq", "value": "gold"}]})
        # the first pass asked `steady`, so its scan has passed `lagging` (as stored: silver)
        assert reevaluated(running_stack, segment, 1, quiet_s=0.1, expected=1) == [steady]
        assert running_stack.segments.get(f"/api/users/{lagging}/profile").json()["traits"]["tier"] == "silver"
        held.rollback()  # the profile write lands now, after the scan, before the settle pass
    eventually(lambda: segment in segment_ids(running_stack, lagging), timeout_s=SETTLE_S + 15,
               what="the lagging user entered")
    assert segment in segment_ids(running_stack, steady)
