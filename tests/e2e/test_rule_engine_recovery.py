"""The rule job killed with SIGKILL: `amctl up` restarts it from its newest checkpoint and the
store ends up with every membership, none recorded twice."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import psycopg
import pytest

from tests.e2e.stack import Stack, amctl
from tests.e2e.test_rule_engine import create, eventually, segment_ids, send

pytestmark = pytest.mark.e2e


def rule_engine(stack: Stack) -> dict[str, object]:
    rows = json.loads(amctl(stack.env, "status", "--json").stdout)
    return next(r for r in rows if r["name"] == "rule-engine")


def checkpoint_id(stack: Stack) -> int:
    job = stack.rule_engine.get("/actuator/health").json()["components"]["flinkJob"]["details"]
    return int(job.get("lastCheckpointId") or 0)


def test_killed_job_resumes_from_its_checkpoint_without_losing_or_repeating(running_stack: Stack) -> None:
    marker = uuid.uuid4().hex[:8]
    segment = create(running_stack, {"all": [{"field": "cohort", "operator": "eq", "value": marker},
                                             {"field": "totalSpent", "operator": "gt", "value": 100}]})
    time.sleep(0.5)
    before = [f"rec-{marker}-{i}" for i in range(5)]
    for user in before:
        send(running_stack, user, "purchase", amount=150, cohort=marker)
    eventually(lambda: all(segment in segment_ids(running_stack, u) for u in before), what="members before")
    seen = checkpoint_id(running_stack)
    eventually(lambda: checkpoint_id(running_stack) > seen, timeout_s=20, what="a checkpoint after them")
    # these happen after the checkpoint: the restarted job will process them again
    after_checkpoint = [f"rec-{marker}-{i}" for i in range(5, 8)]
    for user in after_checkpoint:
        send(running_stack, user, "purchase", amount=150, cohort=marker)
    eventually(lambda: all(segment in segment_ids(running_stack, u) for u in after_checkpoint))

    pid = int(str(rule_engine(running_stack)["pid"]))
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    eventually(lambda: rule_engine(running_stack)["state"] == "stopped", what="the job is down")
    up = amctl(running_stack.env, "up")
    assert up.returncode == 0, up.stderr
    assert "rule-engine" in up.stderr and "healthy" in up.stderr
    log = amctl(running_stack.env, "logs", "rule-engine", "--lines", "500").stdout
    assert "restoring from checkpoint" in log and "/chk-" in log

    late = [f"rec-{marker}-{i}" for i in range(8, 10)]
    for user in late + before[:1]:  # a member spends again: still one membership
        send(running_stack, user, "purchase", amount=150, cohort=marker)
    everyone = before + after_checkpoint + late
    eventually(lambda: all(segment in segment_ids(running_stack, u) for u in everyone), what="members after")
    time.sleep(2)  # anything replayed from before the kill has been written by now
    with psycopg.connect(running_stack.database_url) as conn:
        rows = conn.execute(
            "SELECT user_id, count(*) FROM membership_changes WHERE segment_id = %s AND change = 'entered'"
            " GROUP BY user_id", (segment,)).fetchall()
        profile = conn.execute("SELECT profile FROM user_profiles WHERE user_id = %s", (before[0],)).fetchone()
    assert dict(rows) == dict.fromkeys(everyone, 1)  # every user entered exactly once
    assert profile is not None and profile[0]["totalSpent"] == 300  # restored state, not a fresh profile
