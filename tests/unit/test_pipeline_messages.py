"""The records between our processes: one encoding each, which definition wins, and readers that
turn a bad record into UnreadableRecord instead of an exception that would stop a consumer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from confluent_kafka import Message
from hypothesis import given
from hypothesis import strategies as st

from flinkjob.feeder import definition_of
from flinkjob.logic import compile_definition
from server.domain.events import UserEvent
from server.domain.membership import MembershipChange, SegmentRule
from server.domain.pipeline import (
    MembershipOutput,
    ProbeEcho,
    ProbeRecord,
    ReevaluationRequest,
    keyed_input,
    membership_record,
    profile_from_json,
    rules_input,
)
from server.domain.profile import Profile, apply_event
from server.domain.rules import parse_rule
from server.domain.segment import SegmentDefinition, SegmentStatus, SegmentType
from server.stores.records import RejectedRecords, UnreadableRecord, decode, encode, value_read_by
from tests.unit.test_storable import STORABLE_JSON

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
SEG = "4b0e3f6c-8d2a-4c1e-9f7b-2a5d6e8c9b10"
RULE = {"conditions": [{"field": "totalSpent", "operator": "gt", "value": 1000}]}
V1 = SegmentDefinition(SEG, 1, "High Value Users", SegmentType.DYNAMIC, SegmentStatus.ACTIVE, RULE, NOW)
V2 = replace(V1, version=2, status=SegmentStatus.PAUSED)
DELETED = SegmentDefinition.tombstone(SEG)
EVENT = UserEvent("u1", "purchase", "e1", NOW, {"amount": 1500, "plan": "pro"}, received_at=NOW)
PROFILE = apply_event(None, EVENT, retention=NOW - NOW)
CHANGE = MembershipChange("u1", SEG, "entered", NOW, 1, event_received_at=NOW)

Reader = Callable[[Any], Any]


def j(text: str) -> bytes:
    """A record's JSON with the test segment's id for `$SEG`."""
    return text.replace("$SEG", SEG).encode()

READERS: dict[str, Reader] = {"keyed input": keyed_input, "rules input": rules_input,
                              "segment-membership": membership_record, "user-profiles": profile_from_json,
                              "segment-rules": SegmentDefinition.from_json}


# -- which definition wins -------------------------------------------------------------------------

def test_a_newer_version_supersedes_an_older_one_and_not_the_other_way_round() -> None:
    assert V2.supersedes(V1)
    assert not V1.supersedes(V2)  # an older definition arriving late changes nothing


def test_an_equal_version_is_a_repeat_not_a_change() -> None:
    assert not V1.supersedes(V1)
    assert not replace(V1, name="renamed").supersedes(V1)


def test_a_delete_always_wins_and_nothing_replaces_it() -> None:
    assert DELETED.supersedes(V2) and DELETED.supersedes(DELETED)
    assert not replace(V2, version=99).supersedes(DELETED)  # a segment id is never used again


def test_anything_supersedes_nothing_and_a_compiled_rule_counts_by_its_version() -> None:
    assert V1.supersedes(None) and DELETED.supersedes(None)
    held = SegmentRule.build(SEG, 2, parse_rule(RULE))
    assert not V1.supersedes(held) and not V2.supersedes(held)
    assert replace(V1, version=3).supersedes(held) and DELETED.supersedes(held)


# -- one encoding each -----------------------------------------------------------------------------

@pytest.mark.parametrize(("message", "read"), [
    (V1, rules_input),
    (DELETED, rules_input),
    (ProbeRecord("t0k3n"), rules_input),
    (ProbeRecord("t0k3n"), keyed_input),
    (EVENT, keyed_input),
    (ReevaluationRequest("u1", (V1, DELETED)), keyed_input),
    (MembershipOutput(CHANGE, PROFILE), membership_record),
    (MembershipOutput(replace(CHANGE, change="exited", event_received_at=None)), membership_record),
    (ProbeEcho("t0k3n"), membership_record),
])
def test_every_message_reads_back_as_itself_from_its_topic(message: Any, read: Reader) -> None:
    assert decode(encode(message), read) == message


def test_a_profile_snapshot_reads_back_as_itself() -> None:
    assert decode(encode(PROFILE), profile_from_json) == PROFILE


def test_the_encodings_are_the_ones_on_the_wire() -> None:
    """What the consumers outside the job (and records already on a durable broker) read."""
    assert V1.to_json() == {"id": SEG, "name": "High Value Users", "type": "DYNAMIC", "status": "ACTIVE",
                            "version": 1, "rules": RULE, "updatedAt": "2026-11-25T12:00:00Z"}
    assert DELETED.to_json() == {"id": SEG, "deleted": True}
    assert ReevaluationRequest("u1", (DELETED,)).to_json() == {
        "kind": "reevaluate", "userId": "u1", "segments": [{"id": SEG, "deleted": True}]}
    assert MembershipOutput(CHANGE).to_json() == {"userId": "u1", "segmentId": SEG, "change": "entered",
                                                  "at": "2026-11-25T12:00:00Z", "segmentVersion": 1,
                                                  "eventReceivedAt": "2026-11-25T12:00:00Z"}
    assert MembershipOutput(CHANGE, PROFILE).to_json()["profile"] == PROFILE.to_json()
    assert ProbeEcho("t").to_json() == {"probe": "t"}


def test_a_shared_profile_snapshot_is_encoded_once_and_the_same() -> None:
    snapshot = PROFILE.to_json()
    assert MembershipOutput(CHANGE, PROFILE).to_json(snapshot)["profile"] is snapshot
    assert MembershipOutput(CHANGE, PROFILE).to_json(snapshot) == MembershipOutput(CHANGE, PROFILE).to_json()


def test_each_topic_tells_its_kinds_apart() -> None:
    assert isinstance(decode(encode(EVENT), keyed_input), UserEvent)
    assert decode(b'{"kind":"probe","id":"__probe__","token":"t"}', rules_input) == ProbeRecord("t")
    assert decode(b'{"kind":"probe","userId":"__probe__","token":"t"}', keyed_input) == ProbeRecord("t")
    seed = j('{"id":"$SEG","version":1,"type":"DYNAMIC","status":"ACTIVE","rules":null}')  # no name, updatedAt
    assert decode(seed, rules_input) == SegmentDefinition(SEG, 1)
    assert decode(b'{"probe":"t"}', membership_record) == ProbeEcho("t")
    with pytest.raises(UnreadableRecord, match="kind: expected"):
        decode(b'{"kind":"split","userId":"u1"}', keyed_input)


def test_a_definition_is_active_only_when_dynamic_active_and_with_a_rule() -> None:
    assert V1.active and compile_definition(V1) is not None
    assert not V2.active and not DELETED.active
    assert not replace(V1, type=SegmentType.STATIC).active and not replace(V1, rules=None).active


# -- bad records -----------------------------------------------------------------------------------

UNREADABLE_ANYWHERE = {
    "not JSON": b"{not json",
    "not UTF-8": b"\xff\xfe{}",
    "empty": b"",
    "NaN": b'{"userId":"u1","eventType":"purchase","eventId":"e","timestamp":"2026-01-01T00:00:00Z",'
           b'"properties":{"amount":NaN}}',
    "overflow": j('{"id":"$SEG","userId":"u","version":1,"type":"DYNAMIC","status":"ACTIVE","rules":{"x":1e400}}'),
    "lone surrogate": j('{"userId":"u\\ud800","segmentId":"$SEG","change":"entered","at":"2026-01-01T00:00:00Z",'
                        '"segmentVersion":1}'),
    "NUL": b'{"id":"s\\u0000","userId":"u\\u0000","traits":{}}',
    "a list": b"[1, 2]",
    "a string": b'"userId"',
}
EVENT_JSON = b'"eventType":"purchase","eventId":"e","timestamp":"2026-01-01T00:00:00Z"'
CHANGE_JSON = j('"userId":"u","segmentId":"$SEG","change":"entered","at":"2026-01-01T00:00:00Z","segmentVersion":1')
DEFINITION_JSON = j('"id":"$SEG","version":1,"type":"DYNAMIC","status":"ACTIVE"')
NOT_THIS_TOPICS_MESSAGE = [  # valid JSON, but not what the topic carries: a missing field, a wrong type
    ("keyed input", b'{"kind":"reevaluate","userId":"u1"}'),
    ("keyed input", j('{"kind":"reevaluate","userId":"u1","segments":[{"id":"$SEG","version":true}]}')),
    ("keyed input", b'{"kind":"merge","userId":"u1"}'),
    ("keyed input", b'{"kind":"probe","userId":"__probe__"}'),
    ("keyed input", b'{"userId":7,' + EVENT_JSON + b"}"),
    ("keyed input", b'{"userId":"' + b"u" * 129 + b'",' + EVENT_JSON + b"}"),  # longer than any API accepts
    ("keyed input", b'{"userId":"u",' + EVENT_JSON.replace(b"2026-01-01T00:00:00Z", b"soon") + b"}"),
    ("rules input", b"{" + DEFINITION_JSON.replace(b'"version":1', b'"version":"1"') + b"}"),
    ("rules input", b"{" + DEFINITION_JSON.replace(b"ACTIVE", b"ARCHIVED") + b"}"),
    ("rules input", b"{" + DEFINITION_JSON.replace(b'"version":1', b'"version":2147483648') + b"}"),  # > integer
    ("rules input", b"{" + DEFINITION_JSON.replace(SEG.encode(), b"high-value") + b"}"),  # not a segment's id
    ("rules input", b"{" + DEFINITION_JSON + b',"rules":[1]}'),
    ("rules input", b"{" + DEFINITION_JSON + b',"updatedAt":"never"}'),
    ("rules input", j('{"id":"$SEG","deleted":"yes"}')),
    ("rules input", b'{"deleted":true}'),
    ("segment-rules", b'{"kind":"probe","token":"t"}'),
    ("segment-rules", b"{" + DEFINITION_JSON.replace(b'"version":1', b'"version":-1') + b"}"),
    ("segment-membership", b"{" + CHANGE_JSON.replace(b"entered", b"joined") + b"}"),
    ("segment-membership", b"{" + CHANGE_JSON.replace(b"2026-01-01T00:00:00Z", b"yesterday") + b"}"),
    ("segment-membership", b"{" + CHANGE_JSON + b',"profile":{"userId":"u","totalSpent":"lots"}}'),
    ("segment-membership", b"{" + CHANGE_JSON + b',"profile":[]}'),
    ("segment-membership", b'{"probe":null}'),
    ("segment-membership", b"{" + CHANGE_JSON.replace(b'"segmentVersion":1', b'"segmentVersion":1.0') + b"}"),
    ("user-profiles", b'{"traits":{}}'),
    ("user-profiles", b'{"userId":"' + b"u" * 129 + b'"}'),
    ("user-profiles", b'{"userId":"u","traits":7}'),
    ("user-profiles", b'{"userId":"u","history":{"purchase":[[1]]}}'),
    ("user-profiles", b'{"userId":"u","firstSeen":"never"}'),
    ("user-profiles", b'{"userId":"u","totalSpent":"nan"}'),
    ("user-profiles", b'{"userId":"u","eventCount":1.8e19}'),  # int() of it would not fit a bigint
    ("user-profiles", b'{"userId":"u","eventCount":9223372036854775808}'),
    ("user-profiles", b'{"userId":"u","eventCounts":{"purchase":-1}}'),
]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("bad", UNREADABLE_ANYWHERE)
def test_a_record_that_is_not_storable_json_is_unreadable_on_every_topic(reader: str, bad: str) -> None:
    with pytest.raises(UnreadableRecord):
        decode(UNREADABLE_ANYWHERE[bad], READERS[reader])


@pytest.mark.parametrize(("reader", "record"), NOT_THIS_TOPICS_MESSAGE)
def test_a_record_that_is_not_the_topics_message_is_unreadable(reader: str, record: bytes) -> None:
    with pytest.raises(UnreadableRecord):
        decode(record, READERS[reader])


VALID: dict[str, list[Any]] = {
    "keyed input": [EVENT, ReevaluationRequest("u1", (V1, DELETED)), ProbeRecord("t")],
    "rules input": [V1, DELETED, ProbeRecord("t")],
    "segment-membership": [MembershipOutput(CHANGE, PROFILE), ProbeEcho("t")],
    "user-profiles": [PROFILE],
    "segment-rules": [V1, V2],
}


@pytest.mark.parametrize("reader", READERS)
@given(data=st.data())
def test_a_message_with_any_field_changed_or_gone_is_read_as_sent_or_unreadable(reader: str, data: st.DataObject,
                                                                              ) -> None:
    record = data.draw(st.sampled_from(VALID[reader])).to_json()
    field = data.draw(st.sampled_from(sorted(record)))
    if data.draw(st.booleans()):
        del record[field]
    else:
        record[field] = data.draw(STORABLE_JSON)
    try:
        message = decode(orjson.dumps(record), READERS[reader])
    except UnreadableRecord:
        return  # skipped by the consumer: what matters is that nothing else was raised
    assert decode(encode(message), READERS[reader]) == message  # what was read is what travels on


@given(rules=STORABLE_JSON)
def test_a_definition_with_any_rules_compiles_or_is_skipped(rules: Any) -> None:
    definition = decode(orjson.dumps({"id": SEG, "version": 1, "type": "DYNAMIC", "status": "ACTIVE",
                                      "rules": rules if isinstance(rules, dict) else {"any": rules}}),
                        SegmentDefinition.from_json)
    rule = compile_definition(definition)  # never an exception: the job would fail on it
    assert rule is None or (rule.segment_id, rule.version) == (SEG, 1)


def test_rejected_records_are_skipped_counted_and_logged_with_where_they_were(
        caplog: pytest.LogCaptureFixture) -> None:
    counted: list[None] = []
    rejected = RejectedRecords(logging.getLogger("test.rejected"), lambda: counted.append(None))
    messages = [Message(topic="segment-membership", partition=2, offset=offset, value=value)
                for offset, value in enumerate([encode(MembershipOutput(CHANGE)), b"garbage", encode(ProbeEcho("t")),
                                                None])]
    with caplog.at_level(logging.WARNING, "test.rejected"):
        read = rejected.readable(messages, value_read_by(membership_record))
    assert read == [MembershipOutput(CHANGE), ProbeEcho("t")]
    assert len(counted) == 2
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "skipped a record (segment-membership[2]@1)",
        "skipped a record (segment-membership[2]@3)"]


def test_the_feeder_reads_definitions_and_tombstones_and_rejects_the_rest() -> None:
    def record(key: bytes | None, value: bytes | None) -> Message:
        return Message(topic="segment-rules", partition=0, offset=0, key=key, value=value)

    assert definition_of(record(SEG.encode(), encode(V1))) == V1
    assert definition_of(record(SEG.encode(), None)) == DELETED
    for key in (None, b"", b"high-value", b"\xff"):
        with pytest.raises(UnreadableRecord, match="tombstone"):
            definition_of(record(key, None))
    with pytest.raises(UnreadableRecord):
        definition_of(record(SEG.encode(), b"{"))


def test_profile_snapshots_need_a_user() -> None:
    with pytest.raises(UnreadableRecord, match="userId"):
        decode(b'{"traits": {}}', profile_from_json)
    assert decode(b'{"userId": "u"}', profile_from_json) == Profile("u")
