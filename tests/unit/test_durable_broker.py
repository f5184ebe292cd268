"""How the local stack keeps the broker's records: in its S3 server's memory by default, in files with
`amctl up --durable-broker`, dropped once read either way (without starting anything)."""

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


def test_by_default_the_records_live_in_the_s3_servers_memory_and_go_once_read(tmp_path: Path) -> None:
    local = LocalStack(AmctlSettings(state_dir=tmp_path, broker_keep_s=30))
    names = [c.name for c in local.components()]
    s3, kafka = local.component("s3"), local.component("kafka")
    assert names.index("s3") == names.index("kafka") - 1 and "--directory" not in s3.command
    assert kafka.command[-1] == "s3://broker/" and kafka.restarts_with == ("s3",)
    assert kafka.describe is not None and kafka.describe().startswith("records in S3 on port")  # nothing runs
    retain = [s3.command[i + 1] for i, arg in enumerate(s3.command) if arg == "--retain"]
    assert "user-events=rule-engine-users" in retain
    assert "segment-membership=communication-api-on-enter,delivery-worker,rule-engine-writer" in retain
    assert not any(spec.startswith(("segment-rules=", "email-jobs-dead-letter=")) for spec in retain)  # kept whole
    assert s3.command[s3.command.index("--keep-for") + 1] == "30"
    assert local.service_env()["AM_KAFKA_IDEMPOTENCE"] == "false"


def test_durable_broker_stores_in_the_s3_server_started_before_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "someone-elses")  # the broker must not pick up the caller's AWS settings
    local = stack(tmp_path, durable=True)
    names = [c.name for c in local.components()]
    assert names.index("s3") == names.index("kafka") - 1
    s3, kafka = local.component("s3"), local.component("kafka")
    assert s3.port == local.settings.ports.s3 and s3.port_setting == "AMCTL_PORT_S3"
    assert s3.command[s3.command.index("--directory") + 1] == str(tmp_path / "broker-s3" / "objects")
    assert kafka.command[kafka.command.index("--storage-engine") + 1] == "s3://broker/"
    assert kafka.env["AWS_ENDPOINT"] == f"http://127.0.0.1:{local.settings.ports.s3}"
    assert kafka.env["AWS_ALLOW_HTTP"] == "true" and "AWS_PROFILE" not in kafka.env
    assert kafka.describe is not None and kafka.describe().endswith("on disk")
    # no idempotent producers: the durable broker could acknowledge a lost batch's retry as a duplicate
    assert local.service_env()["AM_KAFKA_IDEMPOTENCE"] == "false"
    assert local.component("rule-engine").env["AM_KAFKA_IDEMPOTENCE"] == "false"


def test_the_epoch_changes_only_when_the_records_are_gone(tmp_path: Path) -> None:
    durable, memory = stack(tmp_path / "d", durable=True), stack(tmp_path / "m", durable=False)
    durable.s3.create_data_dir()
    epochs = {"durable": [], "memory": []}  # type: dict[str, list[str]]
    for component, started in (("kafka", 1000.0), ("kafka", 2000.0), ("s3", 3000.0), ("s3", 4000.0)):
        for local, key in ((durable, "durable"), (memory, "memory")):
            local.run_dir.mkdir(parents=True, exist_ok=True)
            (local.run_dir / f"{component}.json").write_text(json.dumps(
                {"pid": 1, "port": 1, "created_at": started, "started_at": started}))
            epochs[key].append(local.component("rule-engine").env["AM_BROKER_EPOCH"])
    assert len(set(epochs["durable"])) == 1  # its records live as long as its data directory
    # in memory: a broker restart keeps the records (they are in the S3 server), an S3 server restart does not
    assert epochs["memory"][0] == epochs["memory"][1] != epochs["memory"][2] != epochs["memory"][3]
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


def test_the_storage_flags_are_for_the_local_target() -> None:
    result = CliRunner().invoke(app, ["up", "--target", "k8s", "--durable-broker"])
    assert result.exit_code == 1
    assert "choose the local broker's storage" in result.output
