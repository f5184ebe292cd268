"""A user's profile and the one function that defines how an event changes it.

Traits hold the latest value of every event property (so `{"plan": "pro"}` on any event sets
trait `plan`), except `amount`, which feeds the aggregates instead. Aggregates: totalSpent (sum of
`amount` on `purchase`), purchaseCount, eventCount, firstSeen, lastSeen and per-type eventCounts.
Each event also enters the user's history: its time and the properties a rule may filter or aggregate on
(`history_properties`), kept for the rule job's lookback (or the longest window a live rule needs, if
longer) so a rule written later sees the past. The history is bounded per user: at most
`MAX_HISTORY_EVENTS` entries and about `MAX_HISTORY_BYTES` of properties, the oldest dropped first. The
first and last time of each event type are kept beyond it (`event_times`).
A profile built only from events without a userId is `anonymous`; `recent_events` holds the ids of
its latest events (what a read can wait for, and how a second copy of an event is recognised).

`merge_profiles` is how an anonymous visitor's profile joins the known user's when they identify.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from server.domain.events import UserEvent
from server.domain.timeutil import format_timestamp, parse_timestamp

PURCHASE = "purchase"
AMOUNT = "amount"
HISTORY_LOOKBACK = timedelta(days=30)  # the default lookback: as far back as the Ingestion API takes events
MAX_HISTORY_EVENTS = 1000  # per user, all event types together
MAX_HISTORY_BYTES = 64 * 1024  # per user, the properties' approximate encoded size
MAX_HISTORY_PROPERTIES = 16  # per event; the others are not kept in the history (traits keep them)
MAX_HISTORY_TEXT = 128  # longer strings are not kept in the history
ENTRY_OVERHEAD = 24  # a history entry's own bytes: its time and the JSON around it
HistoryEntry = tuple[float, dict[str, Any]]  # (epoch seconds, properties)
_TIME = itemgetter(0)
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
    # event type -> [(epoch seconds, properties)], oldest first
    history: dict[str, list[HistoryEntry]] = field(default_factory=dict)
    anonymous: bool = False
    recent_events: list[str] = field(default_factory=list)  # eventIds, newest last
    event_times: dict[str, tuple[float, float]] = field(default_factory=dict)  # type -> (first, last) epoch s
    history_bytes: int = 0  # the history's size as `entry_size` counts it

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
            "eventTimes": {k: list(v) for k, v in self.event_times.items()},
            "historyBytes": self.history_bytes,
            **({"anonymous": True} if self.anonymous else {}),
            "recentEvents": self.recent_events,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        profile = cls(
            user_id=data["userId"],
            traits=dict(data.get("traits") or {}),
            total_spent=float(data.get("totalSpent", 0.0)),
            purchase_count=int(data.get("purchaseCount", 0)),
            event_count=int(data.get("eventCount", 0)),
            first_seen=parse_timestamp(data["firstSeen"]) if data.get("firstSeen") else None,
            last_seen=parse_timestamp(data["lastSeen"]) if data.get("lastSeen") else None,
            event_counts={k: int(v) for k, v in (data.get("eventCounts") or {}).items()},
            history={k: [(float(t), props) if props.__class__ is dict else _entry(t, props) for t, props in v]
                     for k, v in (data.get("history") or {}).items()},
            anonymous=bool(data.get("anonymous", False)),
            recent_events=[str(i) for i in data.get("recentEvents") or []],
            event_times={k: (float(v[0]), float(v[1])) for k, v in (data.get("eventTimes") or {}).items()},
        )
        held = data.get("historyBytes")  # absent in profiles written before the history kept properties
        profile.history_bytes = int(held) if isinstance(held, int) else _history_size(profile.history)
        return profile


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


def _entry(t: Any, properties: Any) -> HistoryEntry:
    """A stored history entry; `[time, amount]` is how entries were kept before they held properties."""
    if isinstance(properties, dict):
        return float(t), properties
    return float(t), ({AMOUNT: float(properties)} if properties else {})


def history_properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    """What the history keeps of an event's properties: numbers, booleans and short strings, a few of them."""
    kept: dict[str, Any] = {}
    for name, value in properties.items():
        if value.__class__ in (int, float, bool) or (value.__class__ is str and len(value) <= MAX_HISTORY_TEXT):
            kept[name] = value
            if len(kept) == MAX_HISTORY_PROPERTIES:
                break
    return kept


def entry_size(entry: HistoryEntry) -> int:
    """An entry's approximate encoded size: what `MAX_HISTORY_BYTES` bounds."""
    size = ENTRY_OVERHEAD
    for name, value in entry[1].items():
        size += len(name) + (len(value) if value.__class__ is str else 8) + 6
    return size


def _history_size(history: dict[str, list[HistoryEntry]]) -> int:
    return sum(entry_size(e) for entries in history.values() for e in entries)


def _bounded(history: dict[str, list[HistoryEntry]], size: int) -> int:
    """Drop the oldest entries (of any type) until the history is within its bounds; returns its size."""
    count = sum(map(len, history.values()))
    while history and (count > MAX_HISTORY_EVENTS or size > MAX_HISTORY_BYTES):
        oldest = min(history, key=lambda kind: history[kind][0][0])
        dropped, *entries = history[oldest]
        history[oldest] = entries
        size -= entry_size(dropped)
        count -= 1
        if not entries:
            del history[oldest]
    return size


def apply_event(profile: Profile | None, event: UserEvent, retention: timedelta, now: datetime | None = None
                ) -> Profile:
    """The profile after `event`; the input is not modified. `retention` is how long the history keeps events
    (zero: none are kept), counted back from `now` (or the event's time when it is later, or no `now` is given)."""
    base = profile if profile is not None else Profile(user_id=event.user_id, anonymous=event.anonymous)
    amount = _amount(event)
    kind, ts = event.event_type, event.timestamp.timestamp()
    traits = {**base.traits, **{k: v for k, v in event.properties.items() if k != AMOUNT}}
    counts = {**base.event_counts, kind: base.event_counts.get(kind, 0) + 1}
    first, last = base.event_times.get(kind, (ts, ts))
    times = {**base.event_times, kind: (min(first, ts), max(last, ts))}
    history, size = base.history, base.history_bytes
    if retention > timedelta(0):
        newest = ts if now is None else max(ts, now.timestamp())
        history, size = _with_entry(history, size, kind, (ts, history_properties(event.properties)),
                                    newest - retention.total_seconds())
    is_purchase = kind == PURCHASE
    return Profile(  # every field given: faster than dataclasses.replace, which this hot path felt
        user_id=base.user_id,
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
        event_times=times,
        history_bytes=size,
    )


def _with_entry(history: dict[str, list[HistoryEntry]], size: int, kind: str, entry: HistoryEntry,
                horizon: float) -> tuple[dict[str, list[HistoryEntry]], int]:
    """A new history with `entry` added in time order and entries of its type older than `horizon` gone."""
    entries = history.get(kind, [])
    start = bisect_left(entries, horizon, key=_TIME)
    size -= sum(entry_size(e) for e in entries[:start])
    kept = entries[start:]
    if entry[0] < horizon:  # older than the history keeps
        return ({**history, kind: kept} if kept else {k: v for k, v in history.items() if k != kind}), size
    if not kept or kept[-1][0] <= entry[0]:  # the usual case: the newest event comes last
        kept.append(entry)
    else:
        insort(kept, entry, key=_TIME)
    history = {**history, kind: kept}
    return history, _bounded(history, size + entry_size(entry))


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
            merged.history[kind] = sorted([*merged.history.get(kind, []), *entries], key=_TIME)
        for kind, (first, last) in side.event_times.items():
            held = merged.event_times.get(kind, (first, last))
            merged.event_times[kind] = (min(held[0], first), max(held[1], last))
    merged.history_bytes = _bounded(merged.history, _history_size(merged.history))
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
    history = {k: kept for k, v in profile.history.items() if (kept := v[bisect_left(v, horizon, key=_TIME):])}
    return replace(profile, history=history, history_bytes=_history_size(history))
