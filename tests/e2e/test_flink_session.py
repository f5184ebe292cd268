"""`amctl up --flink session`: the rule job on a JobManager and a TaskManager of their own, submitted by
`flinkjob.submit` (the k8s target's `rule-job-submit`); the seed flow works and a TaskManager killed with
SIGKILL under load recovers from the checkpoint with every event counted once."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.stack import Stack, amctl, component, eventually, stack_environment, started_stack
from tests.e2e.test_rule_engine import create, segment_ids, send
from tests.e2e.test_rule_engine_recovery import converges_after_a_kill

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def session_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with started_stack(stack_environment(tmp_path_factory.mktemp("session-stack")), "--flink", "session") as stack:
        yield stack


def flink_rest(stack: Stack) -> str:
    return f"http://127.0.0.1:{stack.env['AMCTL_PORT_FLINK_UI']}"


def test_the_job_runs_on_the_session_cluster_and_the_seed_flow_works(session_stack: Stack) -> None:
    rows = {row["name"]: row for row in json.loads(amctl(session_stack.env, "status", "--json").stdout)}
    assert rows["jobmanager"]["state"] == rows["taskmanager"]["state"] == "running"
    assert "1 job(s) running" in rows["jobmanager"]["detail"]
    jobs = httpx.get(f"{flink_rest(session_stack)}/jobs/overview", timeout=5).json()["jobs"]
    assert [j["name"] for j in jobs if j["state"] == "RUNNING"] == ["audience-rule-engine"]
    # the rule engine runs no mini-cluster of its own: the job it reports is the cluster's
    health = session_stack.rule_engine.get("/actuator/health").json()["components"]["flinkJob"]["details"]
    assert health["jobId"] == next(j["jid"] for j in jobs if j["state"] == "RUNNING")

    marker = uuid.uuid4().hex[:8]
    segment = create(session_stack, {"all": [{"field": "cohort", "operator": "eq", "value": marker},
                                             {"field": "totalSpent", "operator": "gt", "value": 100}]})
    time.sleep(0.5)  # the rule reaches the job (a later one would still apply: rules backfill)
    buyer, browser = f"buyer-{marker}", f"browser-{marker}"
    send(session_stack, buyer, "purchase", amount=150, cohort=marker)
    send(session_stack, browser, "purchase", amount=20, cohort=marker)
    eventually(lambda: segment in segment_ids(session_stack, buyer), timeout_s=30, what="the buyer in the segment")
    assert segment not in segment_ids(session_stack, browser)


def test_a_second_up_leaves_the_running_job_alone(session_stack: Stack) -> None:
    before = httpx.get(f"{flink_rest(session_stack)}/jobs/overview", timeout=5).json()["jobs"]
    up = amctl(session_stack.env, "up")
    assert up.returncode == 0, up.stderr
    after = httpx.get(f"{flink_rest(session_stack)}/jobs/overview", timeout=5).json()["jobs"]
    assert [j["jid"] for j in after] == [j["jid"] for j in before]  # no second job was submitted
    assert "already runs" in amctl(session_stack.env, "logs", "rule-job-submit", "--lines", "20").stdout


def test_the_cluster_cannot_be_switched_while_the_job_runs(session_stack: Stack) -> None:
    switch = amctl(session_stack.env, "up", "--flink", "mini")
    assert switch.returncode == 1
    assert "cannot move to a mini cluster while it runs" in switch.stderr
    assert component(session_stack, "taskmanager")["state"] == "running"  # nothing was stopped or started
    assert json.loads((Path(session_stack.env["AMCTL_STATE_DIR"]) / "stack.json").read_text())["flink"] == "session"


def test_a_taskmanager_killed_under_load_recovers_from_the_checkpoint(session_stack: Stack) -> None:
    converges_after_a_kill(session_stack, "taskmanager")
