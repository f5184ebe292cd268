"""How the local stack runs the broker on disk (`amctl up --durable-broker`), without starting anything."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from amctl.cli import app
from amctl.local.options import StackOptions
from amctl.local.stack import LocalStack, StackError
from amctl.settings import AmctlSettings

pytestmark = pytest.mark.unit


def stack(state_dir: Path, durable: bool) -> LocalStack:
    return LocalStack(AmctlSettings(state_dir=state_dir), options=StackOptions(durable_broker=durable))


def pretend_running(local: LocalStack, name: str) -> None:
    """A run record naming this test's own process: the stack takes the component for running."""
    local.run_dir.mkdir(parents=True, exist_ok=True)
    created = psutil.Process(os.getpid()).create_time()
    (local.run_dir / f"{name}.json").write_text(json.dumps(
        {"pid": os.getpid(), "port": None, "created_at": created, "started_at": created}))


def test_memory_broker_is_the_default_and_has_no_s3_server(tmp_path: Path) -> None:
    local = LocalStack(AmctlSettings(state_dir=tmp_path))
    names = [c.name for c in local.components()]
    assert "s3" not in names
    kafka = local.component("kafka")
    assert kafka.command[-1] == "memory://tansu/" and kafka.describe is not None
    assert kafka.describe().startswith("in memory")
    assert local.service_env()["AM_KAFKA_IDEMPOTENCE"] == "true"


def test_durable_broker_stores_in_the_s3_server_started_before_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "someone-elses")  # the broker must not pick up the caller's AWS settings
    local = stack(tmp_path, durable=True)
    names = [c.name for c in local.components()]
    assert names.index("s3") == names.index("kafka") - 1
    s3, kafka = local.component("s3"), local.component("kafka")
    assert s3.port == local.settings.ports.s3 and s3.port_setting == "AMCTL_PORT_S3"
    assert str(tmp_path / "broker-s3" / "objects") in s3.command  # the data lives in the state dir
    assert kafka.command[kafka.command.index("--storage-engine") + 1] == "s3://broker/"
    assert kafka.env["AWS_ENDPOINT"] == f"http://127.0.0.1:{local.settings.ports.s3}"
    assert kafka.env["AWS_ALLOW_HTTP"] == "true" and "AWS_PROFILE" not in kafka.env
    assert kafka.describe is not None and kafka.describe().startswith("durable")
    # no idempotent producers: the durable broker could acknowledge a lost batch's retry as a duplicate
    assert local.service_env()["AM_KAFKA_IDEMPOTENCE"] == "false"
    assert local.component("rule-engine").env["AM_KAFKA_IDEMPOTENCE"] == "false"


def test_durable_epoch_survives_broker_restarts_the_memory_one_does_not(tmp_path: Path) -> None:
    durable, memory = stack(tmp_path / "d", durable=True), stack(tmp_path / "m", durable=False)
    durable.s3.create_data_dir()
    epochs = {"durable": [], "memory": []}  # type: dict[str, list[str]]
    for started in (1000.0, 2000.0):  # the broker restarted: a new run record
        for local, key in ((durable, "durable"), (memory, "memory")):
            local.run_dir.mkdir(parents=True, exist_ok=True)
            (local.run_dir / "kafka.json").write_text(json.dumps(
                {"pid": 1, "port": 1, "created_at": started, "started_at": started}))
            epochs[key].append(local.component("rule-engine").env["AM_BROKER_EPOCH"])
    assert epochs["durable"][0] == epochs["durable"][1]
    assert epochs["memory"][0] != epochs["memory"][1]
    durable.s3.create_data_dir()  # again: the data and its epoch are kept
    assert durable.broker_epoch() == epochs["durable"][0]


@pytest.mark.parametrize("running", ["kafka", "s3"])
def test_storage_cannot_switch_while_the_broker_runs(tmp_path: Path, running: str) -> None:
    StackOptions(durable_broker=True).save(tmp_path)
    pretend_running(stack(tmp_path, durable=True), running)
    with pytest.raises(StackError, match="running with durable storage") as failure:
        stack(tmp_path, durable=False).up(lambda name, state: None)
    assert "amctl down" in failure.value.hint and "--memory-broker" in failure.value.hint
    assert StackOptions.load(tmp_path).durable_broker  # the stored choice is unchanged


def test_missing_node_is_one_clear_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # nothing installed yet
    s3 = stack(tmp_path / "state", durable=True).component("s3")
    assert s3.preparing.startswith("installing s3rver (npm)")
    assert s3.prepare is not None
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(StackError, match="needs node and npm") as failure:
        s3.prepare()
    assert "nodejs.org" in failure.value.hint


def test_the_storage_flags_are_for_the_local_target() -> None:
    result = CliRunner().invoke(app, ["up", "--target", "k8s", "--durable-broker"])
    assert result.exit_code == 1
    assert "choose the local broker's storage" in result.output
