"""The CLI's surface: version, help (`-h` and `--help` on every command), and how it says what went wrong."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer.main

from amctl import __version__
from amctl.cli import app
from tests.cli import invoke, one_error, run

pytestmark = pytest.mark.unit


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _command_paths(sub, (*path, name))


COMMANDS = list(_command_paths(typer.main.get_command(app)))


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"amctl {__version__}"


def test_help_lists_the_stack_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("up", "down", "status", "logs"):
        assert command in result.output


@pytest.mark.parametrize("flag", ["-h", "--help"])
@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "amctl")
def test_every_command_has_help_under_both_flags(path: tuple[str, ...], flag: str) -> None:
    result = invoke(*path, flag, env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Usage: amctl " + " ".join(path) in result.output
    assert re.search(r"--help\s+-h\s", result.output)


def test_every_command_is_covered() -> None:
    assert len(COMMANDS) >= 30 and ("segment", "create") in COMMANDS and ("images", "build") in COMMANDS


def test_unknown_target_is_rejected() -> None:
    result = invoke("--target", "mars", "status")
    assert result.exit_code == 2
    assert "'mars' is not one of 'local', 'k8s'" in one_error(result.stderr)
    assert result.stderr.splitlines()[-1] == "  see: amctl --help"


def test_invalid_port_setting_is_one_clear_line() -> None:
    result = invoke("status", env={"AMCTL_PORT_SEGMENT_API": "eighty"})
    assert result.exit_code == 2
    assert "invalid setting segment_api: Input should be a valid integer" in one_error(result.stderr)


@pytest.mark.parametrize(("args", "message"), [
    (["--subject", "s", "--body", "b", "--schedule", "tomorrow"], "is not now, on_enter or an ISO time"),
    (["--subject", "s", "--body", "b", "--schedule", "2026-12-01T09:00:00"], "has no time zone"),
    (["--subject", "s"], "a campaign needs a body"),
    (["--subject", "s", "--body", "b", "--body-file", "x.txt"], "give --body or --body-file, not both"),
])
def test_campaign_create_refuses_bad_input_before_calling_the_api(args: list[str], message: str) -> None:
    result = invoke("campaign", "create", "c", "--segment", "s1", *args)
    assert result.exit_code == 2  # a usage error: nothing was sent
    assert message in one_error(result.stderr)


def test_an_unreadable_template_file_is_a_failure_not_a_usage_error() -> None:
    result = invoke("campaign", "create", "c", "--segment", "s1", "--subject", "s", "--body-file", "/no/such/file")
    assert result.exit_code == 1
    assert "cannot read the body" in one_error(result.stderr)


@pytest.mark.parametrize(("args", "message"), [
    (["create", "d", "--events", "entered,left"], "--events: 'entered,left' is not entered, exited"),
    (["create", "d", "--events", "exited,exited"], "names a change twice"),
    (["create", "d", "--header", "Authorization"], "--header: 'Authorization' is not NAME=VALUE"),
    (["--target", "k8s", "create", "d"], "--url is needed on k8s"),
    (["update", "d1"], "nothing to change"),
    (["update", "d1", "--segment", "s1", "--all-segments"], "give --segment or --all-segments, not both"),
    (["rotate-secret", "d1", "--grace", "soon"], "--grace: 'soon' is not a duration"),
    (["rotate-secret", "d1", "--grace", "200h"], "--grace: 200h is longer than 7 days"),
    (["replay", "d1", "--from", "yesterday"], "--from: 'yesterday' is neither an ISO time"),
    (["replay", "d1", "--from", "1h", "--to", "2026-12-01T09:00:00"], "--to: '2026-12-01T09:00:00' has no time zone"),
])
def test_destination_commands_refuse_bad_input_before_calling_the_api(args: list[str], message: str) -> None:
    target = args[:2] if args[0] == "--target" else []
    result = invoke(*target, "destination", *args[len(target):], env={"AMCTL_PORT_COMMUNICATION_API": "1"})
    assert result.exit_code == 2  # a usage error: nothing was sent (nothing listens on port 1 either)
    assert message in one_error(result.stderr)


def test_campaign_mails_is_for_the_local_target() -> None:
    result = invoke("--target", "k8s", "campaign", "mails", "c1")
    assert result.exit_code == 1 and "local mail sink" in one_error(result.stderr)


def test_an_error_line_is_not_wrapped_when_stderr_is_not_a_terminal() -> None:
    """CI logs: rich would wrap at 80 columns mid-sentence; one error stays one line, as the real executable runs."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR", "TTY_COMPATIBLE")}
    name = "a-scenario-name-long-enough-to-push-the-error-line-past-eighty-columns"
    result = run("scenario", "run", name, env=env)
    assert result.returncode == 1
    line = one_error(result.stderr)
    assert line.startswith(f"error: no scenario '{name}' (known: ") and len(line) > 100
