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
BEHAVIOUR_OPERATORS: Final = ("eq", "ne", "gt", "gte", "lt", "lte")

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
class Behaviour:
    """How often (`count`) or how much `amount` (`sum`) of `event` happened, optionally `within` a window."""

    event: str
    metric: str  # "count" | "sum"
    operator: str
    value: float
    within: timedelta | None = None
    field: str = "amount"


Rule = Condition | AllOf | AnyOf | Not | Behaviour


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
