"""Why a user is in a segment: the segment's rule evaluated now on the user's stored profile, next to the stored
membership and the reason the rule engine gave when the user entered.

Only the rule engine decides memberships; this reads what it wrote. The two views can disagree: for a moment
(the store has the profile of an event before its memberships, a new version of the segment is still reaching
its users), until a timer fires (a window of the rule passed), or while a paused segment's members exit.
`note` says which it can be, rather than answering one of them.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from server.domain.profile import Profile
from server.domain.rules import Rule, explain, parse_rule, windows
from server.domain.segment import SegmentStatus, SegmentType
from server.runtime.errors import NotFound
from server.segment_api.reads import UserRead
from server.segment_api.repository import SegmentRow
from server.segment_api.schemas import ExplanationPublic
from server.stores.profile_store import Membership


def explanation(segment: SegmentRow, read: UserRead, memberships: Collection[Membership],
                now: datetime) -> ExplanationPublic:
    """The answer of `GET /api/users/{id}/segments/{segmentId}/explain`; NotFound when the store knows nothing
    of the user (no profile, no membership)."""
    if read.profile is None and not memberships:
        raise NotFound(f"no user '{read.asked}': no event seen for it and no membership")
    held = next((m for m in memberships if m.segment_id == segment.id), None)
    tree: Rule | None = None
    rule: dict[str, Any] | None = None
    if segment.type == SegmentType.DYNAMIC and segment.rules is not None:
        tree = parse_rule(segment.rules)  # validated when it was stored
        profile = Profile.from_json(read.profile) if read.profile is not None else Profile(read.user_id)
        rule = explain(tree, profile, now, {m.segment_id for m in memberships})
    return ExplanationPublic(
        user_id=read.user_id, resolved_from=read.resolved_from, segment_id=segment.id, segment_name=segment.name,
        member=held is not None, entered_at=held.entered_at if held else None, evaluated_at=now, rule=rule,
        because=dict(held.because) if held is not None and held.because is not None else None,
        note=disagreement(segment, held, tree, bool(rule["result"]) if rule is not None else None),
    )


def disagreement(segment: SegmentRow, held: Membership | None, tree: Rule | None, result: bool | None) -> str | None:
    """What a reader should know when the stored membership and the rule's result now differ (or the segment is
    paused); None when they agree."""
    member = held is not None
    if segment.status == SegmentStatus.PAUSED:
        if member:
            return ("the segment is PAUSED: the rule engine no longer evaluates it and lets its members go; "
                    "this membership has not exited yet")
        return "the segment is PAUSED: the rule holds, but no one enters a paused segment" if result else None
    if tree is None or result is None or member == result:
        return None  # a STATIC segment has no rule to disagree with
    pending = []
    if windows(tree):
        pending.append("a window of the rule has passed and the rule engine's timer for it has not fired yet")
    if held is not None and held.segment_version != segment.version:
        pending.append(f"the segment changed since the user entered (version {held.segment_version}, now "
                       f"{segment.version}) and its re-evaluation has not reached the user yet")
    pending.append("the rule engine has not applied the user's latest event yet" if member else
                   "the rule engine has not applied the user's latest event, or this version of the segment, yet")
    head = ("the user is a member, but the rule does not hold now" if member else
            "the rule holds now, but the user is not a member")
    return f"{head}: {'; or '.join(pending)}"
