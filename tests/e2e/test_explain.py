"""Why a user is in a segment, end to end on a real local stack: the rule engine stores the reason of the entry
(the event and the condition it flipped), and explain shows the rule on the stored profile, node by node."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.e2e.stack import Stack, amctl, eventually
from tests.e2e.test_rule_engine import create, segment_ids

pytestmark = pytest.mark.e2e


def purchase(stack: Stack, user: str, **properties: Any) -> str:
    response = stack.events.post("/api/events", json={"userId": user, "eventType": "purchase",
                                                      "properties": properties})
    assert response.status_code == 202, response.text
    return str(response.json()["eventId"])


def explain(stack: Stack, user: str, segment: str, **params: Any) -> dict[str, Any]:
    response = stack.segments.get(f"/api/users/{user}/segments/{segment}/explain", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_a_membership_names_the_event_and_the_condition_that_made_the_user_enter(running_stack: Stack) -> None:
    marker = uuid.uuid4().hex[:8]
    user = f"why-{marker}"
    segment = create(running_stack, {"all": [{"field": "cohort", "operator": "eq", "value": marker},
                                             {"event": "purchase", "count": {"gte": 2}, "within": "P30D"}]})
    time.sleep(0.5)  # let the definition reach the job
    first = purchase(running_stack, user, amount=40, cohort=marker)
    # on a loaded machine the definition can reach the job after an event, and backfill then decides the entry:
    # the first purchase is applied (and any backfill of it through) before the one whose reason is checked
    time.sleep(4)
    before = explain(running_stack, user, segment, after=first, wait=5)
    assert (before["member"], before["rule"]["result"], before["because"], before["note"]) == (False, False, None, None)
    assert [(leaf["value"], leaf["result"]) for leaf in before["rule"]["all"]] == [(marker, True), (1, False)]

    second = purchase(running_stack, user, amount=60, cohort=marker)
    eventually(lambda: segment in segment_ids(running_stack, user), what="the user in the segment")
    [held] = running_stack.segments.get(f"/api/users/{user}/segments").json()["segments"]
    because = held["because"]
    assert (because["cause"], because["eventId"], because["eventType"]) == ("event", second, "purchase")
    assert because["leaves"] == [{"path": "rules.all[1]", "value": 2, "result": True, "was": 1}]  # only the count

    after = explain(running_stack, user, segment)
    assert (after["member"], after["rule"]["result"], after["because"], after["note"]) == (True, True, because, None)
    assert after["enteredAt"] == held["enteredAt"]
    cohort, count = after["rule"]["all"]
    assert (cohort["path"], cohort["operand"], cohort["value"], cohort["result"]) == ("rules.all[0]", marker, marker,
                                                                                      True)
    assert (count["path"], count["count"], count["value"], count["result"]) == ("rules.all[1]", {"gte": 2}, 2, True)

    shown = amctl(running_stack.env, "user", "explain", user, segment)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1:4] == ["✓ all  rules",
                          f'├── ✓ cohort eq "{marker}"  observed "{marker}"  rules.all[0]',
                          '└── ✓ {"event":"purchase","count":{"gte":2},"within":"P30D"}  observed 2  rules.all[1]']
    assert lines[4] == f"entered at {held['enteredAt']} because event {second} (purchase): rules.all[1] 1 → 2"
    print(f"\nGET /api/users/{user}/segments/{segment}/explain\n{json.dumps(after)}\n"
          f"$ amctl user explain {user} {segment}\n{shown.stdout}")
