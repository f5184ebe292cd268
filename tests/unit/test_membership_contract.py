"""The published contract of `segment-membership` (docs/contracts/segment-membership.v1.schema.json)
against the records our code writes and reads: what we write validates, what our reader refuses the
schema refuses too."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from server.domain.events import UserEvent
from server.domain.membership import MembershipChange
from server.domain.pipeline import MembershipOutput, ProbeEcho, membership_record
from server.domain.profile import apply_event
from server.domain.records import MAX_USER_ID_CHARS, MAX_VERSION, InvalidRecord
from tests.contracts import membership_validator

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 25, 12, 0, 0, 123456, tzinfo=UTC)
SEG = "4b0e3f6c-8d2a-4c1e-9f7b-2a5d6e8c9b10"
EVENT = UserEvent("u1", "purchase", "e1", NOW, {"amount": 1500, "plan": "pro", "address": {"city": "Graz"}},
                  received_at=NOW)
PROFILE = apply_event(None, EVENT, retention=NOW - datetime(2026, 11, 1, tzinfo=UTC))  # with history
ENTERED = MembershipChange("u1", SEG, "entered", NOW, 3, event_received_at=NOW)
EXITED = replace(ENTERED, change="exited", segment_version=MAX_VERSION)

WRITTEN = {
    "entered, with profile and eventReceivedAt": MembershipOutput(ENTERED, PROFILE),
    "entered, bare": MembershipOutput(replace(ENTERED, event_received_at=None)),
    "exited, with profile": MembershipOutput(EXITED, PROFILE),
    "exited, bare (a timer or backfill)": MembershipOutput(replace(EXITED, event_received_at=None)),
    "static entered": MembershipOutput(replace(ENTERED, event_received_at=None, source="static")),
    "static exited, longest user id": MembershipOutput(
        replace(EXITED, user_id="u" * MAX_USER_ID_CHARS, event_received_at=None, source="static")),
}


@pytest.mark.parametrize("output", WRITTEN.values(), ids=WRITTEN.keys())
def test_what_we_write_validates_and_reads_back(output: MembershipOutput) -> None:
    record = output.to_json()
    membership_validator().validate(record)
    assert membership_record(record) == output  # and our own reader takes it as it was


def test_the_probe_echo_validates_as_the_record_to_skip() -> None:
    membership_validator().validate(ProbeEcho("t0k3n").to_json())
    assert isinstance(membership_record({"probe": "t0k3n"}), ProbeEcho)


def test_source_is_written_only_when_static() -> None:
    assert "source" not in MembershipOutput(ENTERED).to_json()  # rule: records as before the field existed
    static = replace(ENTERED, source="static")
    assert static.to_json()["source"] == "static"
    assert MembershipChange.from_json({**ENTERED.to_json(), "source": "rule"}) == ENTERED


def _without(record: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != name}


GOOD = MembershipOutput(ENTERED, PROFILE).to_json()
REFUSED = {
    "missing userId": _without(GOOD, "userId"),
    "empty userId": {**GOOD, "userId": ""},
    "userId too long": {**GOOD, "userId": "u" * (MAX_USER_ID_CHARS + 1)},
    "bad change": {**GOOD, "change": "joined"},
    "non-uuid segmentId": {**GOOD, "segmentId": "not-a-uuid"},
    "upper-case segmentId": {**GOOD, "segmentId": SEG.upper()},
    "missing at": _without(GOOD, "at"),
    "at not a date-time": {**GOOD, "at": "yesterday"},
    "at with a month 13": {**GOOD, "at": "2026-13-01T00:00:00Z"},
    "segmentVersion a float": {**GOOD, "segmentVersion": 1.5},
    "segmentVersion too big": {**GOOD, "segmentVersion": MAX_VERSION + 1},
    "unknown source": {**GOOD, "source": "import"},
    "profile not an object": {**GOOD, "profile": []},
    "profile totalSpent a string": {**GOOD, "profile": {"userId": "u1", "totalSpent": "lots"}},
    "probe echo without a token": {"probe": ""},
}


@pytest.mark.parametrize("record", REFUSED.values(), ids=REFUSED.keys())
def test_what_our_reader_refuses_the_schema_refuses(record: dict[str, Any]) -> None:
    with pytest.raises(InvalidRecord):
        membership_record(record)
    assert not membership_validator().is_valid(record)


def test_fields_added_later_keep_a_record_valid() -> None:
    """The versioning rule: an additive change is still v1, so unknown fields must not fail validation."""
    membership_validator().validate({**GOOD, "context": {"campaign": "x"}})
    assert membership_record({**GOOD, "context": {"campaign": "x"}}) == MembershipOutput(ENTERED, PROFILE)
