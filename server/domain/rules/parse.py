"""JSON → typed rule tree, collecting every problem with its path; and the tree back to JSON."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from server.domain.rules.model import (
    AGGREGATES,
    BEHAVIOUR_OPERATORS,
    COMPARISONS,
    EQUALITY,
    MAX_DEPTH,
    MAX_NODES,
    MEMBERSHIP,
    METRICS,
    OCCURRENCES,
    OPERATORS,
    PRESENCE,
    TEXT,
    TIME,
    AllOf,
    AnyOf,
    Behaviour,
    Condition,
    Not,
    RelativeTime,
    Rule,
    RuleIssue,
    RuleValidationError,
    SegmentRef,
    Span,
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
        self.filtering = False  # inside a `where`: conditions on the event's properties only

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
        kinds = ("conditions", "all", "any", "not", "field") if self.filtering else _KINDS
        keys = [k for k in kinds if k in raw]
        if len(keys) != 1:
            what = "one of " + ", ".join(kinds)
            found = keys or [k for k in _KINDS if k in raw]
            self.fail(path, f"expected exactly {what}" + (f", got {', '.join(found)}" if found else "")
                      + (" (inside 'where', conditions on the event's properties)" if self.filtering else ""))
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
            return self.behaviour(raw, path, depth)
        if key == "segment":
            return self.reference(raw, path)
        return self.condition(raw, path)

    def reference(self, raw: Mapping[str, Any], path: str) -> SegmentRef | None:
        unknown = set(raw) - {"segment"}
        if unknown:
            self.fail(path, f"unknown key(s): {', '.join(sorted(unknown))}")
            return None
        segment_id = raw["segment"]
        try:
            if isinstance(segment_id, str) and len(segment_id) <= 64:
                return SegmentRef(str(uuid.UUID(segment_id)))
        except ValueError:
            pass
        self.fail(f"{path}.segment", f"expected a segment id (a UUID), got {segment_id!r}")
        return None

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

    def behaviour(self, raw: Mapping[str, Any], path: str, depth: int) -> Behaviour | None:
        event = raw.get("event")
        ok = isinstance(event, str) and 0 < len(event) <= _MAX_FIELD
        if not ok:
            self.fail(f"{path}.event", "expected an event type name")
        unknown = set(raw) - {"event", "where", "within", "between", *METRICS}
        if unknown:
            self.fail(path, f"unknown key(s): {', '.join(sorted(unknown))}")
            ok = False
        metrics = [m for m in METRICS if m in raw]
        if len(metrics) != 1:
            self.fail(path, "a behavioural condition needs exactly one of " + ", ".join(METRICS)
                      + (f", got {', '.join(metrics)}" if metrics else ""))
            return None
        metric = metrics[0]
        where = self.where(raw["where"], f"{path}.where", depth) if "where" in raw else None
        span = self.span(raw, path, metric)
        measured = self.measured(metric, raw[metric], f"{path}.{metric}")
        if not ok or measured is None or span is _INVALID or where is _INVALID:
            return None
        field, tests = measured
        return Behaviour(event=str(event), metric=metric, tests=tests, span=span, field=field, where=where)

    def where(self, raw: Any, path: str, depth: int) -> Any:
        self.filtering = True
        try:
            rule = self.rule(raw, path, depth + 1)
        finally:
            self.filtering = False
        return _INVALID if rule is None else rule

    def span(self, raw: Mapping[str, Any], path: str, metric: str) -> Any:
        given = [k for k in ("within", "between") if k in raw]
        if not given:
            return None
        if metric in OCCURRENCES:
            self.fail(f"{path}.{given[0]}", f"'{metric}' takes before/after, not a window")
            return _INVALID
        if len(given) == 2:
            self.fail(path, "give one of within, between")
            return _INVALID
        if given[0] == "within":
            within = self.duration(raw["within"], f"{path}.within")
            return _INVALID if within is None else Span(within)
        bounds = raw["between"]
        if not (isinstance(bounds, list) and len(bounds) == 2):
            self.fail(f"{path}.between", 'expected [older, newer] durations, e.g. ["P90D", "P30D"]')
            return _INVALID
        older = self.duration(bounds[0], f"{path}.between[0]")
        newer = self.duration(bounds[1], f"{path}.between[1]", zero=True)
        if older is None or newer is None:
            return _INVALID
        if newer >= older:
            self.fail(f"{path}.between", f"the first duration ({bounds[0]}) must reach further back than the "
                                         f"second ({bounds[1]}): from {bounds[0]} ago up to {bounds[1]} ago")
            return _INVALID
        return Span(older, newer)

    def duration(self, raw: Any, path: str, zero: bool = False) -> timedelta | None:
        try:
            if not isinstance(raw, str):
                raise ValueError(f"expected an ISO-8601 duration such as P30D, got {_kind(raw)} {raw!r}")
            value = parse_duration(raw)
            if value < timedelta(0) or (value == timedelta(0) and not zero):
                raise ValueError("must be positive" if not zero else "must not be negative")
            return value
        except ValueError as exc:
            self.fail(path, str(exc))
            return None

    def measured(self, metric: str, spec: Any, path: str) -> tuple[str | None, tuple[tuple[str, Any], ...]] | None:
        """(aggregated field, tests) of a metric's spec such as `{"field": "amount", "gte": 100}`."""
        example = '{"before": "-P30D"}' if metric in OCCURRENCES else '{"gte": 3}'
        if not isinstance(spec, Mapping):
            self.fail(path, f"expected an object such as {example}")
            return None
        field: str | None = None
        if metric in AGGREGATES:
            field = spec.get("field", "amount" if metric != "distinct" else None)
            if not isinstance(field, str) or not field or len(field) > _MAX_FIELD:
                self.fail(f"{path}.field", f"expected the event property to aggregate (up to {_MAX_FIELD} characters)"
                          if field is not None else f"'{metric}' needs the event property to count, e.g. "
                                                    '{"field": "category", "gte": 2}')
                return None
        elif "field" in spec:
            self.fail(f"{path}.field", f"'{metric}' takes no field")
            return None
        allowed = TIME if metric in OCCURRENCES else BEHAVIOUR_OPERATORS
        operators = [k for k in spec if k != "field"]
        if not operators:
            self.fail(path, f"expected at least one of {', '.join(allowed)}, e.g. {example}")
            return None
        tests = []
        for operator in operators:
            if operator not in allowed:
                self.fail(f"{path}.{operator}", f"unknown operator {operator!r}: expected {', '.join(allowed)}")
                continue
            if metric not in OCCURRENCES and operator in EQUALITY and not _is_number(spec[operator]):
                self.fail(f"{path}.{operator}", f"needs a number, got {_kind(spec[operator])} {spec[operator]!r}")
                continue
            value = self.value(operator, spec[operator], True, f"{path}.{operator}")
            if value is not _INVALID:
                tests.append((operator, value))
        if len(tests) != len(operators):
            return None
        return field, tuple(tests)


_INVALID: Any = object()
_KINDS = ("conditions", "all", "any", "not", "field", "event", "segment")


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
    if isinstance(rule, SegmentRef):
        return {"segment": rule.segment_id}
    body = {"event": rule.event}
    if rule.where is not None:
        body["where"] = rule_to_json(rule.where)
    spec: dict[str, Any] = {operator: _value_json(value) for operator, value in rule.tests}
    body[rule.metric] = {"field": rule.field, **spec} if rule.metric in AGGREGATES else spec
    if rule.span is not None and rule.span.end is None:
        body["within"] = format_duration(rule.span.start)
    elif rule.span is not None and rule.span.end is not None:
        body["between"] = [format_duration(rule.span.start), format_duration(rule.span.end)]
    return body
