"""What our processes do, read from their source: the expectations the manifests are checked against.

A container runs `python -m MODULE`; the files that decide what that process builds are MODULE's own
(a package's modules, or the one module file). The stores a process talks to are the ones whose
adapters it constructs there, so a manifest test never copies the template it checks.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path
from typing import Any

from amctl.paths import REPO_ROOT

# The doors to each store: a process that calls one of these talks to that store.
STORE_CLIENT_CALLS = {
    "postgres": frozenset({"Database", "psycopg.connect", "ensure_database"}),
    "kafka": frozenset({"AsyncProducer", "Producer", "Consumer", "AdminClient", "BrokerHealth", "create_topics",
                        "KafkaSource.builder", "KafkaSink.builder"}),
    "aerospike": frozenset({"profile_store", "request_guards", "aerospike.client"}),
    "smtp": frozenset({"SmtpSender"}),
}


def module_files(module: str) -> list[Path]:
    """The source files of `python -m module`: every module of a package, or the one module file."""
    path = REPO_ROOT / module.replace(".", "/")
    if path.is_dir():
        return sorted(path.glob("*.py"))
    return [path.with_suffix(".py")]


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):  # KafkaSource.builder().set_...(): name the first call
        return _dotted(node.func)
    return ""


@cache
def _calls(path: Path) -> tuple[ast.Call, ...]:
    return tuple(node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call))


def called(files: list[Path]) -> set[str]:
    """Every function called in `files`, as written (`Database`, `psycopg.connect`, `KafkaSource.builder`)."""
    return {_dotted(call.func) for path in files for call in _calls(path)}


def stores_used(files: list[Path]) -> set[str]:
    """The stores (postgres, kafka, aerospike, smtp) whose client the code in `files` constructs."""
    names = called(files)
    return {store for store, doors in STORE_CLIENT_CALLS.items() if names & doors}


def build_app_keywords(files: list[Path]) -> dict[str, Any]:
    """The constant keyword arguments of the `build_app(...)` call in `files` (empty when there is none)."""
    for path in files:
        for call in _calls(path):
            if _dotted(call.func) == "build_app":
                return {k.arg: k.value.value for k in call.keywords if k.arg and isinstance(k.value, ast.Constant)}
    return {}


def flinkjob_imports(path: Path) -> list[Path]:
    """`path` and the flinkjob modules it imports, transitively: the code a job graph built there runs."""
    seen: list[Path] = []
    pending = [path]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.append(current)
        for node in ast.walk(ast.parse(current.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("flinkjob."):
                pending.append(REPO_ROOT / (node.module.replace(".", "/") + ".py"))
    return seen
