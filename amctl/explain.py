"""How a membership's explanation prints: the segment's rule as a tree with a ✓ or ✗ on every node and the
observed value on every leaf, then the reason the rule engine stored when the user entered, in one line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text
from rich.tree import Tree

_ANNOTATIONS = frozenset({"path", "result", "value", "missing", "operand"})  # what explain adds to the rule


def show(value: Any) -> str:
    """A value as JSON, as the rule and the API write it (a string quoted, null for none)."""
    return json.dumps(value, ensure_ascii=False)


def explanation(answer: Mapping[str, Any]) -> RenderableType:
    """The whole explanation: a title, the rule tree (or why there is none), the reason, and the note if any."""
    user = answer["userId"] + (f" (asked as {answer['resolvedFrom']})" if answer.get("resolvedFrom") else "")
    verdict = "is in" if answer["member"] else "is not in"
    parts: list[RenderableType] = [
        Text.assemble(("why ", "bold"), (f"{user} {verdict} {answer['segmentName']}", "bold"),
                      f" ({answer['segmentId']}), evaluated at {answer['evaluatedAt']}")]
    rule = answer.get("rule")
    parts.append(rule_tree(rule) if rule is not None else
                 Text("a STATIC segment: its members are added and removed explicitly, there is no rule"))
    parts.append(Text(membership_line(answer)))
    if answer.get("note"):
        parts.append(Text.assemble(("note: ", "bold yellow"), str(answer["note"])))
    return Group(*parts)


def rule_tree(node: Mapping[str, Any]) -> Tree:
    """The explained rule as a rich tree: each node's result, each leaf's condition and observed value, paths."""
    tree = Tree(_label(node))
    _grow(tree, node)
    return tree


def _grow(tree: Tree, node: Mapping[str, Any]) -> None:
    for key in ("all", "any"):
        for child in node.get(key, ()):
            _grow(tree.add(_label(child)), child)
    if "not" in node:
        _grow(tree.add(_label(node["not"])), node["not"])


def _label(node: Mapping[str, Any]) -> Text:
    mark = ("✓ ", "green") if node.get("result") else ("✗ ", "red")
    group = next((key for key in ("all", "any", "not") if key in node), None)
    if group is not None:
        return Text.assemble(mark, (group, "bold"), "  ", (str(node.get("path", "")), "dim"))
    observed = "missing" if node.get("missing") else show(node.get("value"))
    return Text.assemble(mark, leaf(node), "  observed ", (observed, "bold"), "  ", (str(node.get("path", "")), "dim"))


def leaf(node: Mapping[str, Any]) -> str:
    """A leaf's condition in a line: `totalSpent gt 1000`, `member of segment <id>`, or a behavioural
    condition's JSON without what explain added."""
    if "field" in node and "operator" in node:
        operand = f" {show(node['operand'])}" if "operand" in node else ""
        return f"{node['field']} {node['operator']}{operand}"
    if set(node) - _ANNOTATIONS == {"segment"}:
        return f"member of segment {node['segment']}"
    return json.dumps({k: v for k, v in node.items() if k not in _ANNOTATIONS}, ensure_ascii=False,
                      separators=(",", ":"))


def membership_line(answer: Mapping[str, Any]) -> str:
    """`entered at … because …`, or that the user is not a member."""
    if not answer["member"]:
        return "not a member"
    because = answer.get("because")
    if because is None:
        return f"entered at {answer['enteredAt']} (no reason stored: a STATIC member, or an entry from before reasons)"
    return f"entered at {answer['enteredAt']} because {reason(because, answer['segmentId'])}"


def reason(because: Mapping[str, Any], segment_id: str | None = None) -> str:
    """The cause, then the leaves it flipped: `event e-2 (purchase): rules.all[0] 1 → 2`."""
    leaves = [f"{x.get('path')} {show(x['was'])} → {show(x.get('value'))}" if "was" in x
              else f"{x.get('path')} {show(x.get('value'))}" for x in because.get("leaves") or ()]
    return cause(because, segment_id) + (f": {', '.join(leaves)}" if leaves else "")


def cause(because: Mapping[str, Any], segment_id: str | None = None) -> str:
    """What made the change, in words (`segment_id`: the segment it is about, to tell it from one it refers to)."""
    kind = because.get("cause")
    if kind == "event":
        return f"event {because.get('eventId')} ({because.get('eventType')})"
    if kind == "time":
        return "time passed (a window of the rule moved)"
    if kind == "definition":
        which = "the segment" if because.get("segmentId") == segment_id else f"segment {because.get('segmentId')}"
        return f"{which} changed (version {because.get('segmentVersion')})"
    if kind == "membership":
        return f"the user {because.get('change')} segment {because.get('segmentId')}"
    if kind == "identify":
        return f"profiles merged (anonymous id {because.get('anonymousId')})" if "anonymousId" in because \
            else f"merged into {because.get('into')}"
    if kind == "deleted":
        return "the user was deleted"
    return str(kind)
