"""The local stack remembers how it was asked to run, and the key it seals destination secrets with."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from amctl.local.options import StackOptions
from amctl.local.stack import LocalStack, ensure_secrets_key, secrets_key_path
from amctl.settings import AmctlSettings
from server.runtime.secrets import SecretBox

pytestmark = pytest.mark.unit


def test_options_round_trip_and_flags_override_only_what_is_given(tmp_path: Path) -> None:
    assert StackOptions.load(tmp_path) == StackOptions()  # nothing stored: the defaults
    StackOptions(durable_broker=True).save(tmp_path)
    stored = StackOptions.load(tmp_path)
    assert stored == StackOptions(durable_broker=True, monitoring=False)
    assert stored.updated(monitoring=True) == StackOptions(durable_broker=True, monitoring=True)
    assert stored.updated(durable_broker=False) == StackOptions()
    assert stored.updated() == stored


def test_an_unreadable_or_foreign_file_gives_the_defaults(tmp_path: Path) -> None:
    StackOptions.path(tmp_path).write_text("{not json")
    assert StackOptions.load(tmp_path) == StackOptions()
    StackOptions.path(tmp_path).write_text('{"monitoring": true, "from_a_newer_version": 1}')
    assert StackOptions.load(tmp_path) == StackOptions(monitoring=True)


def test_the_secrets_key_is_made_once_per_state_dir_for_its_owner_alone_and_reaches_the_services(
        tmp_path: Path) -> None:
    stack = LocalStack(AmctlSettings(state_dir=tmp_path))
    assert "AM_SECRETS_KEY" not in stack.service_env()  # `up` makes it, `status` does not
    ensure_secrets_key(tmp_path)
    path = secrets_key_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key = path.read_text()
    ensure_secrets_key(tmp_path)
    assert path.read_text() == key  # never replaced: what it sealed must still open
    box = SecretBox(key)
    assert box.open(box.seal("whsec_x")) == "whsec_x"
    for name in ("communication-api", "delivery-worker"):
        assert stack.component(name).env["AM_SECRETS_KEY"] == key
    sink = stack.component("webhook-sink")
    assert sink.port == stack.settings.ports.webhook_sink and sink.port_setting == "AMCTL_PORT_WEBHOOK_SINK"
    assert sink.describe is not None and sink.describe() == "0 requests kept"
