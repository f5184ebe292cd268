"""Segment references end to end on a real local stack: a segment made of a DYNAMIC and a STATIC one follows an
event, a STATIC member change (no event) and a change of the referenced segment's rule (backfill)."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from flinkjob.feeder import SETTLE_MARGIN
from server.stores.topics import SEGMENT_MEMBERSHIP
from tests.e2e.stack import Stack, eventually, read_topic
from tests.e2e.test_rule_engine import create, reevaluated, segment_ids, send

pytestmark = pytest.mark.e2e


def test_a_segment_referring_to_others_follows_events_static_members_and_their_rules(running_stack: Stack) -> None:
    marker = uuid.uuid4().hex[:8]
    user = f"ref-{marker}"
    mine = {"field": "cohort", "operator": "eq", "value": marker}
    vip = create(running_stack, {"all": [mine, {"field": "totalSpent", "operator": "gt", "value": 100}]},
                 name=f"vip {marker}")
    answer = running_stack.segments.post("/api/segments", json={"name": f"churned {marker}", "type": "STATIC"})
    assert answer.status_code == 201, answer.text
    churned = str(answer.json()["id"])
    vip_not_churned = create(running_stack, {"all": [{"segment": vip}, {"not": {"segment": churned}}]},
                             name=f"vip-not-churned {marker}")

    send(running_stack, user, "purchase", amount=150, cohort=marker)
    eventually(lambda: {vip, vip_not_churned} <= segment_ids(running_stack, user), what="in vip and vip-not-churned")

    members = f"/api/segments/{churned}/members"
    assert running_stack.segments.post(members, json={"add": [user]}).status_code == 200
    eventually(lambda: segment_ids(running_stack, user) == {vip, churned}, what="out of vip-not-churned, no event")
    assert running_stack.segments.post(members, json={"remove": [user]}).status_code == 200
    eventually(lambda: segment_ids(running_stack, user) == {vip, vip_not_churned}, what="back when out of churned")

    stricter = {"all": [mine, {"field": "totalSpent", "operator": "gt", "value": 1000}]}
    assert running_stack.segments.put(f"/api/segments/{vip}", json={"rules": stricter}).status_code == 200
    eventually(lambda: segment_ids(running_stack, user) == set(), what="out of both after vip's rule changed")

    # what the rule engine said on segment-membership, and why: the referring segment's changes came from the
    # STATIC member changes and from vip's new definition
    wanted = (user.encode(), vip_not_churned.encode())
    records = read_topic(running_stack, SEGMENT_MEMBERSHIP, expected=4,
                         keep=lambda m: all(part in (m.value() or b"") for part in wanted))
    changes = [orjson.loads(m.value()) for m in records]
    assert [c["change"] for c in changes] == ["entered", "exited", "entered", "exited"]
    assert [c["because"]["cause"] for c in changes[1:]] == ["membership", "membership", "definition"]
    assert [(c["because"]["segmentId"], c["because"].get("change")) for c in changes[1:]] == [
        (churned, "entered"), (churned, "exited"), (vip, None)]


def test_a_referring_segment_follows_the_users_a_change_of_the_referenced_one_reaches(running_stack: Stack) -> None:
    """Backfill asks only the referenced segment's members and the users matching its new rule; the job evaluates
    the segments referring to it for them too, so those enter and exit with it, and no one else is asked."""
    marker = uuid.uuid4().hex[:8]
    spender, saver, idle = f"spender-{marker}", f"saver-{marker}", f"idle-{marker}"
    for user, amount in ((spender, 150), (saver, 50), (idle, 5)):
        send(running_stack, user, "purchase", amount=amount, cohort=marker, tier="gold")
    mine = {"field": "cohort", "operator": "eq", "value": marker}
    buyers = create(running_stack, {"all": [mine, {"field": "totalSpent", "operator": "gt", "value": 100}]})
    gold_buyers = create(running_stack, {"all": [{"segment": buyers}, {"field": "tier", "operator": "eq",
                                                                       "value": "gold"}]})
    eventually(lambda: segment_ids(running_stack, spender) == {buyers, gold_buyers}, what="spender in both")
    time.sleep(SETTLE_MARGIN.total_seconds() + 0.5)  # out of the settle pass's window: only the filter asks them

    wider = {"all": [mine, {"field": "totalSpent", "operator": "gt", "value": 20}]}
    assert running_stack.segments.put(f"/api/segments/{buyers}", json={"rules": wider}).status_code == 200
    eventually(lambda: segment_ids(running_stack, saver) == {buyers, gold_buyers}, what="saver in both, no event")
    narrower = {"all": [mine, {"field": "totalSpent", "operator": "gt", "value": 1000}]}
    assert running_stack.segments.put(f"/api/segments/{buyers}", json={"rules": narrower}).status_code == 200
    eventually(lambda: segment_ids(running_stack, spender) == set() and segment_ids(running_stack, saver) == set(),
               what="both out of both after the referenced rule narrowed")
    assert segment_ids(running_stack, idle) == set()
    for version in (2, 3):  # the wider rule's matches, then its members: never `idle`
        assert idle not in reevaluated(running_stack, buyers, version)
    assert sorted({spender, saver}) == [u for u in reevaluated(running_stack, buyers, 3) if marker in u]
