"""The rule language: parse once into a typed tree, validate with paths, compile to a predicate.

There is deliberately no regex operator: every operator runs in time linear in its input.
"""

from server.domain.rules.analysis import (
    Window,
    lint_rule,
    next_expiry,
    reference_paths,
    references,
    required_retention,
    window_expiry,
    windows,
)
from server.domain.rules.compile import Predicate, Probes, compile_leaves, compile_rule, leaf_results
from server.domain.rules.evaluate import evaluate
from server.domain.rules.explain import explain, flipped
from server.domain.rules.model import (
    OPERATORS,
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
from server.domain.rules.parse import parse_rule, rule_to_json

__all__ = [
    "OPERATORS",
    "AllOf",
    "AnyOf",
    "Behaviour",
    "Condition",
    "Not",
    "Predicate",
    "Probes",
    "RelativeTime",
    "Rule",
    "RuleIssue",
    "RuleValidationError",
    "SegmentRef",
    "Span",
    "Window",
    "compile_leaves",
    "compile_rule",
    "evaluate",
    "explain",
    "flipped",
    "leaf_results",
    "lint_rule",
    "next_expiry",
    "parse_rule",
    "reference_paths",
    "references",
    "required_retention",
    "rule_to_json",
    "window_expiry",
    "windows",
]
