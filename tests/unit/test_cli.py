"""The CLI's surface: version, help, and clean failures for bad input."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from amctl import __version__
from amctl.cli import app

pytestmark = pytest.mark.unit
runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"amctl {__version__}"


def test_help_lists_the_stack_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status", "logs"):
        assert command in result.output


def test_unknown_target_is_rejected() -> None:
    result = runner.invoke(app, ["--target", "mars", "status"])
    assert result.exit_code == 2
    assert "mars" in result.output


def test_invalid_port_setting_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMCTL_PORT_SEGMENT_API", "eighty")
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2
    assert "invalid setting" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--subject", "s", "--body", "b", "--schedule", "tomorrow"], "is not now, on_enter or an ISO time"),
    (["--subject", "s", "--body", "b", "--schedule", "2026-12-01T09:00:00"], "has no time zone"),
    (["--subject", "s"], "a campaign needs a body"),
    (["--subject", "s", "--body", "b", "--body-file", "x.txt"], "give --body or --body-file, not both"),
    (["--subject", "s", "--body-file", "/no/such/file"], "cannot read the body"),
])
def test_campaign_create_refuses_bad_input_before_calling_the_api(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["campaign", "create", "c", "--segment", "s1", *args])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_campaign_mails_is_for_the_local_target() -> None:
    result = runner.invoke(app, ["--target", "k8s", "campaign", "mails", "c1"])
    assert result.exit_code == 1 and "local mail sink" in result.output
