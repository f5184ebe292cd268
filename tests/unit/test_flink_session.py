"""How the local stack runs the rule job on a session cluster (`amctl up --flink session`), without starting it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from amctl.cli import app
from amctl.local import processes
from amctl.local.flink import REPO_ROOT, LocalFlinkCluster, flink_home
from amctl.local.options import StackOptions
from amctl.local.stack import LocalStack, StackError
from amctl.settings import AmctlSettings
from tests.unit.test_durable_broker import pretend_running

pytestmark = pytest.mark.unit


def stack(state_dir: Path, flink: str) -> LocalStack:
    return LocalStack(AmctlSettings(state_dir=state_dir), options=StackOptions(flink=flink))  # type: ignore[arg-type]


def test_the_mini_cluster_is_the_default_and_runs_inside_the_rule_engine(tmp_path: Path) -> None:
    local = LocalStack(AmctlSettings(state_dir=tmp_path))
    names = [c.name for c in local.components()]
    assert not {"jobmanager", "taskmanager", "rule-job-submit"} & set(names)
    assert "AM_FLINK_JOBMANAGER" not in local.component("rule-engine").env


def test_a_session_cluster_starts_before_the_job_is_submitted_to_it(tmp_path: Path) -> None:
    local = stack(tmp_path, "session")
    names = [c.name for c in local.components()]
    assert names[names.index("jobmanager"):names.index("rule-engine") + 1] == [
        "jobmanager", "taskmanager", "rule-job-submit", "rule-engine"]
    ports = local.settings.ports
    submit, engine = local.component("rule-job-submit"), local.component("rule-engine")
    assert submit.oneshot and submit.command[-2:] == ["-m", "flinkjob.submit"]
    for env in (submit.env, engine.env):  # the same state dir (checkpoints) and broker epoch
        assert env["AM_FLINK_JOBMANAGER"] == f"127.0.0.1:{ports.flink_ui}"
        assert env["AM_STATE_DIR"] == str(tmp_path / "rule-engine")
    assert submit.env["AM_BROKER_EPOCH"] == engine.env["AM_BROKER_EPOCH"]
    jobmanager = local.component("jobmanager")
    assert jobmanager.port == ports.flink_ui and jobmanager.command[-1] == "start-foreground"
    assert local.component("taskmanager").env["PYTHONPATH"].split(":")[-1] == str(REPO_ROOT)


def test_the_cluster_gets_its_own_configuration_and_the_python_operators_jar(tmp_path: Path) -> None:
    cluster = LocalFlinkCluster(tmp_path, "127.0.0.1", 40881, 40882)
    cluster.prepare()
    config = yaml.safe_load((cluster.conf_dir / "config.yaml").read_text())
    assert config["rest.port"] == 40881 and config["jobmanager.rpc.port"] == 40882
    assert config["rest.bind-address"] == config["taskmanager.bind-host"] == "127.0.0.1"
    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in config["env.java.opts.all"]  # Java 17 needs them
    assert (cluster.conf_dir / "log4j-console.properties").exists()
    jars = {p.name for p in cluster.lib_dir.iterdir()}
    assert "flink-python-2.0.0.jar" in jars and "flink-connector-kafka.jar" in jars
    assert {p.name for p in (flink_home() / "lib").glob("*.jar")} < jars
    cluster.prepare()  # again, as every start does
    assert {p.name for p in cluster.lib_dir.iterdir()} == jars
    env = cluster.environment({})
    assert env["FLINK_CONF_DIR"] == str(cluster.conf_dir) and env["FLINK_LIB_DIR"] == str(cluster.lib_dir)


def test_no_cluster_answering_means_not_ready(tmp_path: Path) -> None:
    cluster = LocalFlinkCluster(tmp_path, "127.0.0.1", processes.free_port(), processes.free_port())
    assert not cluster.jobmanager_ready() and not cluster.taskmanager_ready()
    assert cluster.describe_jobmanager() == "REST API not answering"


def test_the_choice_is_remembered_and_an_unknown_one_is_the_default(tmp_path: Path) -> None:
    StackOptions(flink="session").save(tmp_path)
    stored = StackOptions.load(tmp_path)
    assert stored.flink == "session" and stored.updated(monitoring=True).flink == "session"
    assert stored.updated(flink="mini") == StackOptions()
    StackOptions.path(tmp_path).write_text('{"flink": "yarn", "monitoring": true}')
    assert StackOptions.load(tmp_path) == StackOptions(monitoring=True)


@pytest.mark.parametrize("running", ["rule-engine", "taskmanager"])
def test_the_job_cannot_move_between_clusters_while_it_runs(tmp_path: Path, running: str) -> None:
    StackOptions(flink="mini" if running == "rule-engine" else "session").save(tmp_path)
    local = stack(tmp_path, "session" if running == "rule-engine" else "mini")
    pretend_running(local, running)
    with pytest.raises(StackError, match="while it runs") as failure:
        local.up(lambda update: None)
    assert "amctl down" in failure.value.hint


def test_the_flink_flag_is_for_the_local_target_and_names_its_choices() -> None:
    result = CliRunner().invoke(app, ["up", "--target", "k8s", "--flink", "session"])
    assert result.exit_code == 1
    assert "how the local target runs the rule job" in result.output
    result = CliRunner().invoke(app, ["up", "--flink", "yarn"])
    assert result.exit_code == 2 and "mini" in result.output and "session" in result.output

