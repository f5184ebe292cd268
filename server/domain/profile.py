"""A user's profile and the one function that defines how an event changes it.

Traits hold the latest value of every event property (so `{"plan": "pro"}` on any event sets
trait `plan`), except `amount`, which feeds the aggregates instead. Aggregates: totalSpent (sum of
`amount` on `purchase`), purchaseCount, eventCount, firstSeen, lastSeen and per-type eventCounts.
For windowed rules each event type keeps a short history of (time, amount), pruned to the longest
window any rule needs and capped at `HISTORY_CAP` entries per type so state stays bounded.
A profile built only from events without a userId is `anonymous`; `recent_events` holds the ids of
its latest events (what a read can wait for, and how a second copy of an event is recognised).

`merge_profiles` is how an anonymous visitor's profile joins the known user's when they identify.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from server.domain.events import UserEvent
from server.domain.timeutil import format_timestamp, parse_timestamp

PURCHASE = "purchase"
AMOUNT = "amount"
HISTORY_CAP = 1000
# A record can reach the topic twice: a producer that gets no ack retries, and without idempotence (the
# local durable broker) the broker stores the retry too. The copy follows the original closely (same key,
# same partition), so the last few ids of the user's events are enough to count it once.
RECENT_EVENT_IDS = 16
# Field names that address aggregates; anything else is a trait (see `Profile.lookup`).
AGGREGATES = ("totalSpent", "purchaseCount", "eventCount", "firstSeen", "lastSeen")


@dataclass(slots=True)
class Profile:
    user_id: str
    traits: dict[str, Any] = field(default_factory=dict)
    total_spent: float = 0.0
    purchase_count: int = 0
    event_count: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    event_counts: dict[str, int] = field(default_factory=dict)
    # event type -> [(epoch seconds, amount)], oldest first
    history: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    anonymous: bool = False
    recent_events: list[str] = field(default_factory=list)  # eventIds, newest last

    def lookup(self, path: tuple[str, ...]) -> Any:
        """Resolve a rule field: an aggregate name, `eventCounts.<type>`, `traits.<a.b>`, or a bare trait path."""
        head = path[0]
        if len(path) == 1 and head in AGGREGATES:
            return _AGGREGATE_GETTERS[head](self)
        if head == "eventCounts" and len(path) == 2:
            return self.event_counts.get(path[1], 0)
        value: Any = self.traits
        for part in path[1:] if head == "traits" else path:
            if not isinstance(value, dict) or part not in value:
                return MISSING
            value = value[part]
        return value

    def to_json(self) -> dict[str, Any]:
        return {
            "userId": self.user_id,
            "traits": self.traits,
            "totalSpent": self.total_spent,
            "purchaseCount": self.purchase_count,
            "eventCount": self.event_count,
            "firstSeen": format_timestamp(self.first_seen) if self.first_seen else None,
            "lastSeen": format_timestamp(self.last_seen) if self.last_seen else None,
            "eventCounts": self.event_counts,
            "history": {k: [list(entry) for entry in v] for k, v in self.history.items()},
            **({"anonymous": True} if self.anonymous else {}),
            "recentEvents": self.recent_events,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        return cls(
            user_id=data["userId"],
            traits=dict(data.get("traits") or {}),
            total_spent=float(data.get("totalSpent", 0.0)),
            purchase_count=int(data.get("purchaseCount", 0)),
            event_count=int(data.get("eventCount", 0)),
            first_seen=parse_timestamp(data["firstSeen"]) if data.get("firstSeen") else None,
            last_seen=parse_timestamp(data["lastSeen"]) if data.get("lastSeen") else None,
            event_counts={k: int(v) for k, v in (data.get("eventCounts") or {}).items()},
            history={k: [(float(t), float(a)) for t, a in v] for k, v in (data.get("history") or {}).items()},
            anonymous=bool(data.get("anonymous", False)),
            recent_events=[str(i) for i in data.get("recentEvents") or []],
        )


class _Missing:
    """A field the profile does not have (distinct from a JSON null)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

_AGGREGATE_GETTERS = {
    "totalSpent": lambda p: p.total_spent,
    "purchaseCount": lambda p: p.purchase_count,
    "eventCount": lambda p: p.event_count,
    "firstSeen": lambda p: p.first_seen if p.first_seen is not None else MISSING,
    "lastSeen": lambda p: p.last_seen if p.last_seen is not None else MISSING,
}


def _amount(event: UserEvent) -> float:
    value = event.properties.get(AMOUNT)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def apply_event(profile: Profile | None, event: UserEvent, retention: timedelta) -> Profile:
    """The profile after `event`; the input is not modified. `retention` bounds the windowed history."""
    base = profile if profile is not None else Profile(user_id=event.user_id, anonymous=event.anonymous)
    amount = _amount(event)
    traits = {**base.traits, **{k: v for k, v in event.properties.items() if k != AMOUNT}}
    counts = {**base.event_counts, event.event_type: base.event_counts.get(event.event_type, 0) + 1}
    history = dict(base.history)
    if retention > timedelta(0):
        ts = event.timestamp.timestamp()
        horizon = ts - retention.total_seconds()
        entries = [e for e in history.get(event.event_type, []) if e[0] >= horizon]
        entries.append((ts, amount))
        entries.sort(key=lambda e: e[0])
        history[event.event_type] = entries[-HISTORY_CAP:]
    is_purchase = event.event_type == PURCHASE
    return replace(
        base,
        traits=traits,
        total_spent=base.total_spent + (amount if is_purchase else 0.0),
        purchase_count=base.purchase_count + (1 if is_purchase else 0),
        event_count=base.event_count + 1,
        first_seen=min(base.first_seen, event.timestamp) if base.first_seen else event.timestamp,
        last_seen=max(base.last_seen, event.timestamp) if base.last_seen else event.timestamp,
        event_counts=counts,
        history=history,
        anonymous=base.anonymous and event.anonymous,
        recent_events=[*base.recent_events[-(RECENT_EVENT_IDS - 1):], event.event_id],
    )


def merge_profiles(known: Profile | None, visitor: Profile | None, user_id: str,
                   traits: dict[str, Any] | None = None) -> Profile:
    """The known user's profile with the visitor's folded in: counts and sums add up, history merges in
    time order, traits are latest-wins (the profile seen last overrides, then `traits` from the identify
    call), and the result is not anonymous. Either side may be absent."""
    sides = sorted((p for p in (known, visitor) if p is not None), key=_last_seen_key)
    merged = Profile(user_id=user_id)
    for side in sides:  # least recently seen first, so the latest traits win
        merged.traits.update(side.traits)
        merged.total_spent += side.total_spent
        merged.purchase_count += side.purchase_count
        merged.event_count += side.event_count
        merged.first_seen = _earliest(merged.first_seen, side.first_seen)
        merged.last_seen = max(filter(None, (merged.last_seen, side.last_seen)), default=None)
        for kind, n in side.event_counts.items():
            merged.event_counts[kind] = merged.event_counts.get(kind, 0) + n
        for kind, entries in side.history.items():
            merged.history[kind] = sorted([*merged.history.get(kind, []), *entries], key=lambda e: e[0])[-HISTORY_CAP:]
    merged.traits.update(traits or {})
    recent = [*(visitor.recent_events if visitor else []), *(known.recent_events if known else [])]
    merged.recent_events = list(dict.fromkeys(recent))[-RECENT_EVENT_IDS:]
    return merged


def _last_seen_key(profile: Profile) -> float:
    return profile.last_seen.timestamp() if profile.last_seen is not None else float("-inf")


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return min(filter(None, (a, b)), default=None)


def prune_history(profile: Profile, now: datetime, retention: timedelta) -> Profile:
    """Drop history older than `retention` before `now` (called when timers fire)."""
    horizon = now.astimezone(UTC).timestamp() - retention.total_seconds()
    history = {k: [e for e in v if e[0] >= horizon] for k, v in profile.history.items()}
    return replace(profile, history={k: v for k, v in history.items() if v})
