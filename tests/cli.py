"""amctl as the CLI tests run it: in-process (typer's CliRunner) or as the installed executable
(`amctl.cli:main`, so its one top-level catch is the one that runs).

Both fail the test when amctl lets an exception escape or prints a traceback, so no CLI test passes
with one; `one_error` checks that a failure says itself in exactly one `error:` line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from amctl.cli import app

AMCTL = Path(sys.executable).with_name("amctl")  # the console script of pyproject.toml: amctl.cli:main


def assert_no_traceback(output: str) -> None:
    assert "Traceback" not in output, output


def invoke(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    """`amctl ARGS` in this process; `env` changes the environment for the call (None unsets a variable)."""
    result = CliRunner().invoke(app, list(args), env=dict(env or {}))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"amctl {' '.join(args)} raised instead of saying what failed") from result.exception
    assert_no_traceback(result.output)
    return result


def run(*args: str, env: Mapping[str, str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`amctl ARGS` as a user runs it: the installed executable, stdout and stderr not a terminal."""
    done = subprocess.run([str(AMCTL), *args], env=dict(env), capture_output=True, text=True, timeout=timeout_s,
                          check=False)
    assert_no_traceback(done.stdout + done.stderr)
    return done


def one_error(stderr: str) -> str:
    """The `error:` line of a failure, once checked that it is the only one and at most a hint follows it."""
    lines = stderr.rstrip("\n").splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    after = lines[errors[0] + 1:]
    assert len(after) <= 1 and all(line.startswith("  ") for line in after), stderr
    return lines[errors[0]]


def json_of(result: Result) -> dict[str, Any]:
    """The JSON object a `--json` command printed, once checked that it succeeded."""
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))
