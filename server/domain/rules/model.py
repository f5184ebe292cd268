"""The typed rule tree every rule is parsed into once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

COMPARISONS: Final = ("gt", "gte", "lt", "lte")
EQUALITY: Final = ("eq", "ne")
MEMBERSHIP: Final = ("in", "not_in")
TEXT: Final = ("contains", "starts_with", "ends_with")
PRESENCE: Final = ("exists", "not_exists")
TIME: Final = ("before", "after")
OPERATORS: Final = (*EQUALITY, *COMPARISONS, "between", *MEMBERSHIP, *TEXT, *PRESENCE, *TIME)
BEHAVIOUR_OPERATORS: Final = ("eq", "ne", "gt", "gte", "lt", "lte", "between")
# What a behavioural condition measures over the matching events: `count` them, aggregate a property
# of theirs, or take the time of the first or last one.
AGGREGATES: Final = ("sum", "avg", "min", "max", "distinct")
OCCURRENCES: Final = ("first", "last")
METRICS: Final = ("count", *AGGREGATES, *OCCURRENCES)

MAX_DEPTH: Final = 16
MAX_NODES: Final = 500


@dataclass(frozen=True, slots=True)
class RelativeTime:
    """A moment relative to evaluation time: `-P30D` is thirty days before now."""

    offset: timedelta


@dataclass(frozen=True, slots=True)
class Condition:
    """`field operator value`; `value` is normalised (tuples for lists, datetimes for timestamps)."""

    field: str
    operator: str
    value: Any = None

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.field.split("."))


@dataclass(frozen=True, slots=True)
class AllOf:
    children: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    children: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Rule


@dataclass(frozen=True, slots=True)
class Span:
    """The events a behavioural condition looks through, by age: from `start` ago up to `end` ago.

    `within P30D` is `Span(30 days)`: every event of the last 30 days (and any stamped later than now);
    `between [P90D, P30D]` is `Span(90 days, 30 days)`: from 90 days ago up to, not including, 30 days ago.
    """

    start: timedelta
    end: timedelta | None = None


@dataclass(frozen=True, slots=True)
class Behaviour:
    """A measure of the user's `event`s (those matching `where`, within `span`) put to `tests`, all of which hold.

    - `count`: how many; without a span or filter, over the user's whole life (`eventCounts`);
    - `sum`/`avg`/`min`/`max` of the number in property `field`, `distinct`: how many different values it has;
      without a span, over the kept history (the lookback); `sum` of a purchase's `amount` with neither span
      nor filter is `totalSpent`;
    - `first`/`last`: the time of the first or last one, tested with before/after.
    """

    event: str
    metric: str
    tests: tuple[tuple[str, Any], ...]  # (operator, value): a number, (low, high), or a moment for first/last
    span: Span | None = None
    field: str | None = None  # the aggregated property
    where: Rule | None = None  # a tree of conditions over the event's properties

    @property
    def lifetime(self) -> bool:
        """Whether the profile's lifetime aggregates answer it, with no history needed."""
        if self.span is not None or self.where is not None:
            return False
        return self.metric in ("count", *OCCURRENCES) or (
            self.metric == "sum" and self.event == "purchase" and self.field == "amount")


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """Membership of another segment (DYNAMIC or STATIC), as the rule job holds it when this rule is evaluated."""

    segment_id: str


Rule = Condition | AllOf | AnyOf | Not | Behaviour | SegmentRef


@dataclass(frozen=True, slots=True)
class RuleIssue:
    """A problem at `path` in the rule document, e.g. `rules.any[1].operator`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class RuleValidationError(ValueError):
    """A rule that cannot be used; `issues` lists every problem found, not only the first."""

    def __init__(self, issues: list[RuleIssue]) -> None:
        super().__init__("; ".join(map(str, issues)))
        self.issues = issues
