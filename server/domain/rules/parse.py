"""JSON → typed rule tree, collecting every problem with its path; and the tree back to JSON."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from server.domain.rules.model import (
    BEHAVIOUR_OPERATORS,
    COMPARISONS,
    EQUALITY,
    MAX_DEPTH,
    MAX_NODES,
    MEMBERSHIP,
    OPERATORS,
    PRESENCE,
    TEXT,
    AllOf,
    AnyOf,
    Behaviour,
    Condition,
    Not,
    RelativeTime,
    Rule,
    RuleIssue,
    RuleValidationError,
)
from server.domain.timeutil import format_duration, format_timestamp, parse_duration, parse_timestamp

_MAX_FIELD = 128
_MAX_LIST = 1000


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _kind(value: Any) -> str:
    return {str: "string", bool: "boolean", list: "list", dict: "object", type(None): "null"}.get(
        type(value), "number" if _is_number(value) else type(value).__name__
    )


class _Parser:
    def __init__(self) -> None:
        self.issues: list[RuleIssue] = []
        self.nodes = 0

    def fail(self, path: str, message: str) -> None:
        self.issues.append(RuleIssue(path, message))

    def rule(self, raw: Any, path: str, depth: int) -> Rule | None:
        self.nodes += 1
        if self.nodes == MAX_NODES + 1:
            self.fail(path, f"rule has more than {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            self.fail(path, f"rule is nested deeper than {MAX_DEPTH} levels")
            return None
        if not isinstance(raw, Mapping):
            self.fail(path, f"expected an object, got {_kind(raw)}")
            return None
        keys = [k for k in ("conditions", "all", "any", "not", "event", "field") if k in raw]
        if len(keys) != 1:
            what = "one of conditions, all, any, not, field, event"
            self.fail(path, f"expected exactly {what}" + (f", got {', '.join(keys)}" if keys else ""))
            return None
        key = keys[0]
        if key in ("conditions", "all", "any"):
            children = raw[key]
            if not isinstance(children, list):
                self.fail(f"{path}.{key}", f"expected a list, got {_kind(children)}")
                return None
            parsed = [self.rule(c, f"{path}.{key}[{i}]", depth + 1) for i, c in enumerate(children)]
            if any(p is None for p in parsed):
                return None
            kids = tuple(p for p in parsed if p is not None)
            return AnyOf(kids) if key == "any" else AllOf(kids)
        if key == "not":
            child = self.rule(raw["not"], f"{path}.not", depth + 1)
            return Not(child) if child is not None else None
        if key == "event":
            return self.behaviour(raw, path)
        return self.condition(raw, path)

    def condition(self, raw: Mapping[str, Any], path: str) -> Condition | None:
        field, operator, value = raw.get("field"), raw.get("operator"), raw.get("value")
        ok = True
        unknown = set(raw) - {"field", "operator", "value"}
        if unknown:
            self.fail(path, f"unknown key(s): {', '.join(sorted(unknown))}")
            ok = False
        if not isinstance(field, str) or not field or len(field) > _MAX_FIELD or "" in field.split("."):
            self.fail(f"{path}.field", f"expected a field name (up to {_MAX_FIELD} characters)")
            ok = False
        if operator not in OPERATORS:
            self.fail(f"{path}.operator", f"unknown operator {operator!r}" if isinstance(operator, str)
                      else "required: one of " + ", ".join(OPERATORS))
            return None
        normalised = self.value(operator, value, "value" in raw, f"{path}.value")
        if normalised is _INVALID or not ok:
            return None
        return Condition(field=str(field), operator=operator, value=normalised)

    def value(self, operator: str, value: Any, present: bool, path: str) -> Any:
        if operator in PRESENCE:
            if present and value is not None:
                self.fail(path, f"operator '{operator}' takes no value")
                return _INVALID
            return None
        if not present:
            self.fail(path, f"operator '{operator}' needs a value")
            return _INVALID
        if operator in COMPARISONS:
            if not _is_number(value):
                self.fail(path, f"operator '{operator}' needs a number, got {_kind(value)} {value!r}")
                return _INVALID
            return value
        if operator in EQUALITY:
            if not _is_scalar(value):
                self.fail(path, f"operator '{operator}' needs a string, number, boolean or null, got {_kind(value)}")
                return _INVALID
            return value
        if operator == "between":
            if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
                self.fail(path, "operator 'between' needs [low, high] numbers")
                return _INVALID
            return (value[0], value[1])
        if operator in MEMBERSHIP:
            if not isinstance(value, list) or not value or len(value) > _MAX_LIST or not all(map(_is_scalar, value)):
                self.fail(path, f"operator '{operator}' needs a non-empty list of up to {_MAX_LIST} scalars")
                return _INVALID
            return tuple(value)
        if operator in TEXT:
            if not isinstance(value, str):
                self.fail(path, f"operator '{operator}' needs a string, got {_kind(value)}")
                return _INVALID
            return value
        # before / after: an ISO-8601 timestamp, or a duration relative to now such as -P30D
        if isinstance(value, str):
            try:
                return RelativeTime(parse_duration(value)) if value.lstrip("-").startswith("P") \
                    else parse_timestamp(value)
            except ValueError:
                pass
        self.fail(path, f"operator '{operator}' needs an ISO-8601 timestamp or a duration like -P30D, got {value!r}")
        return _INVALID

    def behaviour(self, raw: Mapping[str, Any], path: str) -> Behaviour | None:
        event = raw.get("event")
        ok = isinstance(event, str) and 0 < len(event) <= _MAX_FIELD
        if not ok:
            self.fail(f"{path}.event", "expected an event type name")
        metrics = [m for m in ("count", "sum") if m in raw]
        unknown = set(raw) - {"event", "count", "sum", "within"}
        if unknown:
            self.fail(path, f"unknown key(s): {', '.join(sorted(unknown))}")
            ok = False
        if len(metrics) != 1:
            self.fail(path, "a behavioural condition needs exactly one of count, sum")
            return None
        metric = metrics[0]
        spec = raw[metric]
        if not isinstance(spec, Mapping):
            self.fail(f"{path}.{metric}", "expected an object such as {\"gte\": 3}")
            return None
        field = spec.get("field", "amount") if metric == "sum" else "amount"
        if metric == "sum" and field != "amount":
            self.fail(f"{path}.sum.field", f"windowed sums are over 'amount', got {field!r}")
            ok = False
        ops = [k for k in spec if k != "field"]
        if len(ops) != 1 or ops[0] not in BEHAVIOUR_OPERATORS:
            self.fail(f"{path}.{metric}", f"expected one operator of {', '.join(BEHAVIOUR_OPERATORS)}")
            return None
        op = ops[0]
        if not _is_number(spec[op]):
            self.fail(f"{path}.{metric}.{op}", f"needs a number, got {_kind(spec[op])} {spec[op]!r}")
            return None
        within = None
        if "within" in raw:
            try:
                within = parse_duration(str(raw["within"]))
                if within.total_seconds() <= 0:
                    raise ValueError("must be positive")
            except ValueError as exc:
                self.fail(f"{path}.within", str(exc))
                return None
        if not ok:
            return None
        return Behaviour(event=str(event), metric=metric, operator=op, value=spec[op], within=within)


_INVALID: Any = object()


def parse_rule(raw: Any) -> Rule:
    """Parse and validate a rule document; raises `RuleValidationError` listing every issue."""
    parser = _Parser()
    rule = parser.rule(raw, "rules", 1)
    if parser.issues or rule is None:
        raise RuleValidationError(parser.issues or [RuleIssue("rules", "invalid rule")])
    return rule


def _value_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, RelativeTime):
        return format_duration(value.offset)
    return value


def rule_to_json(rule: Rule) -> dict[str, Any]:
    """The canonical JSON of a rule (the seed's `conditions` form becomes `all`)."""
    if isinstance(rule, Condition):
        body: dict[str, Any] = {"field": rule.field, "operator": rule.operator}
        if rule.operator not in PRESENCE:
            body["value"] = _value_json(rule.value)
        return body
    if isinstance(rule, AllOf):
        return {"all": [rule_to_json(c) for c in rule.children]}
    if isinstance(rule, AnyOf):
        return {"any": [rule_to_json(c) for c in rule.children]}
    if isinstance(rule, Not):
        return {"not": rule_to_json(rule.child)}
    spec: dict[str, Any] = {rule.operator: rule.value}
    if rule.metric == "sum":
        spec = {"field": rule.field, **spec}
    body = {"event": rule.event, rule.metric: spec}
    if rule.within is not None:
        body["within"] = format_duration(rule.within)
    return body
