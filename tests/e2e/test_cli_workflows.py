"""The CLI against a running stack, as a user drives it: segments, users, events, load."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, amctl

pytestmark = pytest.mark.e2e


def run_json(stack: Stack, *args: str) -> object:
    result = amctl(stack.env, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_segment_lifecycle_and_user_views(running_stack: Stack, tmp_path: Path) -> None:
    name = f"cli vip {uuid.uuid4().hex[:6]}"
    rules = tmp_path / "rules.yaml"
    rules.write_text("conditions:\n  - {field: totalSpent, operator: gt, value: 1000}\n")
    created = run_json(running_stack, "segment", "create", name, "--rules-file", str(rules))
    assert isinstance(created, dict) and created["version"] == 1
    sid = created["id"]
    time.sleep(0.5)
    user = f"cli-{uuid.uuid4().hex[:6]}"
    sent = amctl(running_stack.env, "events", "send", "--user", user, "--type", "purchase", "-p", "amount=1500")
    assert sent.returncode == 0 and "1 of 1 event(s) accepted" in sent.stdout
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        mine = run_json(running_stack, "user", "segments", user)
        assert isinstance(mine, dict)
        if any(s["segmentId"] == sid for s in mine["segments"]):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the user never entered the segment")
    profile = run_json(running_stack, "user", "profile", user)
    assert isinstance(profile, dict) and profile["totalSpent"] == 1500
    preview = run_json(running_stack, "segment", "preview", "--rules",
                       json.dumps({"field": "totalSpent", "operator": "gte", "value": 1500}))
    assert isinstance(preview, dict) and preview["matching"] >= 1
    updated = run_json(running_stack, "segment", "update", sid, "--description", "big spenders", "--if-version", "1")
    assert isinstance(updated, dict) and updated["version"] == 2
    stale = amctl(running_stack.env, "segment", "update", sid, "--description", "x", "--if-version", "1")
    assert stale.returncode == 1 and "HTTP 412" in stale.stderr and "Traceback" not in stale.stderr
    stats = run_json(running_stack, "segment", "stats", sid)
    assert isinstance(stats, dict) and stats["size"] >= 1
    listed = amctl(running_stack.env, "segment", "list")
    assert listed.returncode == 0 and name in listed.stdout
    assert amctl(running_stack.env, "segment", "delete", sid).returncode == 0
    gone = amctl(running_stack.env, "segment", "get", sid)
    assert gone.returncode == 1 and "HTTP 404" in gone.stderr


def test_bad_rules_are_listed_with_their_paths(running_stack: Stack) -> None:
    result = amctl(running_stack.env, "segment", "create", "bad", "--rules",
                   '{"any":[{"field":"a","operator":"gtt","value":1},{"field":"b","operator":"gt","value":"x"}]}')
    assert result.returncode == 1
    assert "rules.any[0].operator: unknown operator 'gtt'" in result.stderr
    assert "rules.any[1].value: operator 'gt' needs a number" in result.stderr


def test_events_from_a_file_report_bad_lines(running_stack: Stack, tmp_path: Path) -> None:
    good = tmp_path / "events.jsonl"
    good.write_text("\n".join(json.dumps({"userId": f"f{i}", "eventType": "page_view"}) for i in range(3))
                    + '\n{"eventType": "no user"}\n')
    result = amctl(running_stack.env, "events", "send", "--file", str(good))
    assert result.returncode == 1
    assert "3 of 4 event(s) accepted" in result.stdout and "event 4: rejected" in result.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"userId": "x", "eventType": "a"}\nnot json\n')
    result = amctl(running_stack.env, "events", "send", "--file", str(broken))
    assert result.returncode == 1
    assert "broken.jsonl:2: not JSON" in result.stderr and "nothing was sent" in result.stderr


def test_load_mode_reports_rate_and_thresholds(running_stack: Stack) -> None:
    summary = run_json(running_stack, "events", "send", "--rate", "100", "--duration", "2s", "--users", "50")
    assert isinstance(summary, dict)
    assert summary["sent"] + summary["dropped"] == 200
    assert summary["errors"] == 0 and summary["latency_ms"]["p99"] > 0
    breached = amctl(running_stack.env, "events", "send", "--rate", "20", "--duration", "1s",
                     "--threshold", "p50<1us")
    assert breached.returncode == 99 and "FAIL" in breached.stdout
    bad = amctl(running_stack.env, "events", "send", "--rate", "20", "--threshold", "p99<")
    assert bad.returncode == 2 and "expected METRIC<VALUE" in bad.stderr  # a usage error


def test_campaigns_reach_the_mail_sink_once_per_member(running_stack: Stack) -> None:
    """Events → rule job → membership → on-enter campaign → worker → SMTP sink, and a `now` campaign
    sent with `amctl campaign create --wait`: one mail per member, opt-outs skipped."""
    tag = uuid.uuid4().hex[:6]
    segment = run_json(running_stack, "segment", "create", f"vip {tag}", "--rules",
                       json.dumps({"all": [{"field": "totalSpent", "operator": "gt", "value": 1000},
                                           {"field": "tag", "operator": "eq", "value": tag}]}))
    assert isinstance(segment, dict)
    welcome = run_json(running_stack, "campaign", "create", f"welcome {tag}", "--segment", segment["id"],
                       "--schedule", "on_enter", "--subject", "Welcome {{ firstName }}",
                       "--body", "Spent {{ totalSpent }}")
    assert isinstance(welcome, dict) and welcome["status"] == "ACTIVE"
    users = {f"{name}-{tag}": name.title() for name in ("ann", "bob", "cid")}
    for user, first in users.items():
        opt_out = ["-p", "emailOptOut=true"] if first == "Cid" else []
        sent = amctl(running_stack.env, "events", "send", "--user", user, "--type", "purchase", "-p", "amount=1500",
                     "-p", f"tag={tag}", "-p", f"firstName={first}", "-p", f"email={user}@example.com", *opt_out)
        assert sent.returncode == 0, sent.stderr
    deadline = time.monotonic() + 60  # the load test before this one may have left the job a backlog (2 cores)
    while time.monotonic() < deadline:
        got = run_json(running_stack, "campaign", "get", welcome["id"])
        assert isinstance(got, dict)
        if got["counts"]["sent"] == 2 and got["counts"]["skipped"] == 1:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"the welcome mails were not all delivered: {got['counts']}")
    mails = run_json(running_stack, "campaign", "mails", welcome["id"])
    assert isinstance(mails, list)
    assert sorted((m["rcpt_to"][0], m["subject"]) for m in mails) == [
        (f"ann-{tag}@example.com", "Welcome Ann"), (f"bob-{tag}@example.com", "Welcome Bob")]

    now = amctl(running_stack.env, "campaign", "create", f"thanks {tag}", "--segment", segment["id"],
                "--subject", "Thanks", "--body", "Thanks {{ firstName }}", "--wait", "--json")
    assert now.returncode == 0, now.stderr
    done = json.loads(now.stdout)
    assert done["status"] == "COMPLETED" and done["audienceSize"] == 3
    assert done["counts"] == {"queued": 0, "sent": 2, "failed": 0, "skipped": 1, "deferred": 0, "cancelled": 0}
    assert len(run_json(running_stack, "campaign", "mails", done["id"])) == 2  # type: ignore[arg-type]
    bad = amctl(running_stack.env, "campaign", "create", "x", "--segment", segment["id"], "--subject", "s",
                "--body", "{% if %}")
    assert bad.returncode == 1 and "template.body: line 1" in bad.stderr and "Traceback" not in bad.stderr


def test_top_reports_every_service_and_the_rule_job(running_stack: Stack) -> None:
    snapshot = run_json(running_stack, "top", "--interval", "1")
    assert isinstance(snapshot, dict)
    assert {name for name, row in snapshot["services"].items() if row["up"]} == {
        "segment-api", "ingestion-api", "communication-api", "rule-engine", "email-worker", "delivery-worker"}
    assert snapshot["pipeline"]["job_running"] is True
    assert all(snapshot["memory_mib"][name] > 0 for name in ("postgres", "kafka", "rule-engine"))
    assert isinstance(snapshot["segments"], list)
