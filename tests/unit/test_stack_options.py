"""The local stack remembers how it was asked to run."""

from __future__ import annotations

from pathlib import Path

import pytest

from amctl.local.options import StackOptions

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
