"""Values reach SQL only as parameters: SQL text built with f-strings, .format or % may only
splice in module constants (ALL_CAPS names), which hold fixed SQL fragments."""

from __future__ import annotations

import ast
import re

import pytest

from amctl.paths import REPO_ROOT as ROOT

pytestmark = pytest.mark.unit

SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE|DELETE FROM|WHERE|RETURNING|VALUES)\b")
CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9_]*$")


def _text(node: ast.AST) -> str:
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _spliced(node: ast.AST) -> list[ast.expr]:
    """The expressions a string-building node splices into its text."""
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format" \
            and isinstance(node.func.value, ast.Constant | ast.JoinedStr):
        return [*node.args, *(k.value for k in node.keywords)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and isinstance(node.left, ast.Constant):
        return [node.right]
    return []


def dynamic_sql(source: str) -> list[tuple[int, str]]:
    """(line, expression) for every non-constant splice into SQL text."""
    found = []
    for node in ast.walk(ast.parse(source)):
        spliced = _spliced(node)
        if not spliced or not SQL.search(_text(node)):
            continue
        for expr in spliced:
            if not (isinstance(expr, ast.Name) and CONSTANT.match(expr.id)):
                found.append((node.lineno, ast.unparse(expr)))
    return found


def test_the_check_finds_values_spliced_into_sql() -> None:
    bad = 'cur.execute(f"SELECT * FROM segments WHERE name = \'{name}\'")\n' \
          'cur.execute("DELETE FROM campaigns WHERE id = {}".format(campaign_id))\n' \
          'cur.execute("UPDATE segments SET name = \'%s\'" % name)\n' \
          'cur.execute(f"SELECT {_COLUMNS} FROM segments WHERE id = %s", (segment_id,))\n'
    assert dynamic_sql(bad) == [(1, "name"), (2, "campaign_id"), (3, "name")]


def test_no_code_splices_values_into_sql() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line}: {expr}"
                 for folder in ("server", "flinkjob", "amctl")
                 for path in sorted((ROOT / folder).rglob("*.py"))
                 for line, expr in dynamic_sql(path.read_text())]
    assert not offenders, "SQL built from non-constant values:\n" + "\n".join(offenders)
