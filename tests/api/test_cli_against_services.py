"""amctl against the real Segment, Communication and Ingestion APIs (processes on the session PostgreSQL and broker):
what the services refuse is said in one `error:` line, and their text is shown as it is, never as markup."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from amctl.local import processes
from amctl.local.webhook_sink import RequestStore, create_app, running, store_path
from tests.cli import invoke, json_of, one_error, run

pytestmark = pytest.mark.api
RULES = '{"conditions":[{"field":"totalSpent","operator":"gt","value":1000}]}'


def test_a_name_that_exists_is_one_line(services: dict[str, str]) -> None:
    created = invoke("segment", "create", "[/x]", "--rules", RULES, env=services)
    assert created.exit_code == 0, created.output
    assert "[/x]" in created.stdout  # the table's title is the name, as it is
    again = run("segment", "create", "[/x]", "--rules", RULES, env=services)  # the installed executable
    assert again.returncode == 1
    assert one_error(again.stderr) == "error: Segment API: a segment named '[/x]' already exists (HTTP 409)"
    assert again.stdout == ""


def test_server_and_user_text_in_tables_is_shown_as_it_is(services: dict[str, str]) -> None:
    segment = invoke("segment", "create", "[bold]vip[/bold]", "--rules", RULES, "--description", "[red]x", env=services)
    assert segment.exit_code == 0, segment.output
    listed = invoke("segment", "list", env=services)
    assert listed.exit_code == 0 and "[bold]vip[/bold]" in listed.stdout
    segment_id = next(line.split("│")[2].strip() for line in segment.stdout.splitlines() if "│ id " in line)
    campaign = invoke("campaign", "create", "[/y]", "--segment", segment_id, "--schedule", "on_enter",
                      "--subject", "[b]Hi {{ firstName }}[/b]", "--body", "x", env=services)
    assert campaign.exit_code == 0, campaign.output
    assert "[/y]" in campaign.stdout and "[b]Hi {{ firstName }}[/b]" in campaign.stdout
    campaigns = invoke("campaign", "list", env=services)
    assert campaigns.exit_code == 0 and "[/y]" in campaigns.stdout


def test_rejected_rules_name_the_path_in_the_error_line_and_list_every_problem(services: dict[str, str]) -> None:
    result = invoke("segment", "create", "bad", "--rules",
                    '{"conditions":[{"field":"a","operator":"gtt","value":1}]}', env=services)
    assert result.exit_code == 1
    assert one_error(result.stderr) == \
        "error: Segment API: rules.conditions[0].operator: unknown operator 'gtt' (HTTP 422)"
    two = invoke("segment", "create", "bad", "--rules",
                 '{"any":[{"field":"a","operator":"gtt","value":1},{"segment":"x"}]}', env=services)
    assert one_error(two.stderr) == \
        "error: Segment API: rules.any[0].operator: unknown operator 'gtt' (and 1 more, above) (HTTP 422)"
    assert "  rules.any[1].segment: expected a segment id (a UUID), got 'x'" in two.stderr.splitlines()


@pytest.mark.parametrize(("args", "message"), [
    (["segment", "get", "00000000-0000-0000-0000-000000000000"], "(HTTP 404)"),
    (["segment", "delete", "00000000-0000-0000-0000-000000000000"], "(HTTP 404)"),
    (["campaign", "get", "00000000-0000-0000-0000-000000000000"], "(HTTP 404)"),
    (["campaign", "create", "c", "--segment", "00000000-0000-0000-0000-000000000000", "--subject", "s",
      "--body", "{{ unclosed"], "Communication API: "),
])
def test_a_refused_call_is_one_line(services: dict[str, str], args: list[str], message: str) -> None:
    result = invoke(*args, env=services)
    assert result.exit_code == 1
    assert message in one_error(result.stderr)


def test_a_stale_version_is_one_line(services: dict[str, str]) -> None:
    created = invoke("segment", "create", "versioned", "--rules", RULES, "--json", env=services)
    assert created.exit_code == 0, created.output
    segment_id = created.stdout.split('"id": "', 1)[1].split('"', 1)[0]
    stale = invoke("segment", "update", segment_id, "--description", "x", "--if-version", "7", env=services)
    assert stale.exit_code == 1
    assert "(HTTP 412)" in one_error(stale.stderr)


def _static_segment(env: dict[str, str], name: str, members: list[str], broken: str | None = None) -> str:
    """A STATIC segment with `members` written straight into the store; `broken` gets an entry time the
    store cannot read back (PostgreSQL's 'infinity'), so a page of an export fails when it reaches it."""
    created = invoke("segment", "create", name, "--static", "--json", env=env)
    assert created.exit_code == 0, created.output
    segment_id = str(json.loads(created.stdout)["id"])
    with psycopg.connect(env["AM_DATABASE_URL"], autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO segment_memberships (segment_id, user_id, segment_version, entered_at, source)"
                        " VALUES (%s, %s, 1, CASE WHEN %s THEN 'infinity' ELSE now() END, 'static')",
                        [(segment_id, user, user == broken) for user in members])
        cur.execute("INSERT INTO user_profiles (user_id, profile) VALUES (%s, %s)",
                    (members[0], Jsonb({"userId": members[0], "traits": {"plan": "=1+1", "seats": 3}})))
    return segment_id


def test_export_writes_the_file_whole_and_says_how_many(services: dict[str, str], tmp_path: Path) -> None:
    members = [f"exp-{i:04d}" for i in range(1100)]  # past one page of the export
    segment_id = _static_segment(services, "Export Me", members)
    out = tmp_path / "members.csv"
    done = run("segment", "export", segment_id, "--traits", "plan,seats", "--output", str(out), env=services)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"exported 1,100 members to {out}"
    lines = out.read_text().splitlines()
    assert lines[0] == "userId,enteredAt,segmentVersion,source,traits.plan,traits.seats"
    assert len(lines) == 1 + 1100 and [line.split(",")[0] for line in lines[1:]] == members
    assert lines[1].endswith(",static,'=1+1,3") and lines[2].endswith(",static,,")
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~_umask()
    jsonl = invoke("segment", "export", segment_id, "--format", "jsonl", "-o", "-", env=services)
    assert jsonl.exit_code == 0 and jsonl.stderr.strip() == "exported 1,100 members"
    assert [json.loads(line)["userId"] for line in jsonl.stdout.splitlines()] == members


def test_an_export_that_breaks_off_leaves_no_file(services: dict[str, str], tmp_path: Path) -> None:
    members = [f"brk-{i:04d}" for i in range(1100)]
    segment_id = _static_segment(services, "Breaks Off", members, broken=members[1050])  # on the second page
    out = tmp_path / "members.csv"
    failed = run("segment", "export", segment_id, "--output", str(out), env=services)
    assert failed.returncode == 1
    assert "error: the Segment API at " in one_error(failed.stderr) and "failed to answer" in failed.stderr
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary part
    unknown = invoke("segment", "export", "00000000-0000-0000-0000-000000000000", "-o", str(out), env=services)
    assert unknown.exit_code == 1 and "(HTTP 404)" in one_error(unknown.stderr) and not out.exists()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_destination_from_create_to_delete_with_the_local_receiver(services: dict[str, str]) -> None:
    """Created with the default URL (the local receiver), tested with one signed call that the receiver
    kept and `received --secret` verifies, changed, paused and resumed, rotated, replayed, deleted."""
    port = processes.free_port()
    env = {**services, "AMCTL_PORT_WEBHOOK_SINK": str(port)}
    segment = json_of(invoke("segment", "create", "hooked", "--rules", RULES, "--json", env=env))
    store = RequestStore(store_path(Path(env["AMCTL_STATE_DIR"])))
    with running(create_app(store.keep), "127.0.0.1", port):
        created = invoke("destination", "create", "CRM [sync]", "--segment", str(segment["id"]), "--events",
                         "entered", "--header", "Authorization=Bearer t", "--json", env=env)
        assert created.exit_code == 0, created.output
        destination = json.loads(created.stdout)
        assert destination["url"] == f"http://127.0.0.1:{port}/hooks/crm-sync"
        assert destination["headers"] == {"Authorization": "•••"} and destination["events"] == ["entered"]
        assert "will not be shown again" in created.stderr and destination["secret"].startswith("whsec_")
        did = destination["id"]
        tested = invoke("destination", "test", did, env=env)
        assert tested.exit_code == 0, tested.output
        assert "delivered" in tested.stdout and "True" in tested.stdout
        received = json.loads(invoke("destination", "received", "--path", "/hooks/crm-sync", "--secret",
                                     destination["secret"], "--json", env=env).stdout)
        assert [(r["signature"], r["headers"]["authorization"]) for r in received] == [("verified", "Bearer t")]
        assert json.loads(received[0]["body"])["properties"]["test"] is True
    shown = invoke("destination", "get", did, env=env)
    assert shown.exit_code == 0 and "CRM [sync]" in shown.stdout and "whsec_…" in shown.stdout
    assert destination["secret"] not in shown.stdout
    listed = json_of(invoke("destination", "list", "--json", env=env))
    assert did in [d["id"] for d in listed["items"]]
    paused = json_of(invoke("destination", "update", did, "--pause", "--events", "entered,exited", "--json", env=env))
    assert paused["status"] == "PAUSED" and paused["events"] == ["entered", "exited"]
    assert paused["headers"] == {"Authorization": "•••"} and paused["segmentIds"] == [segment["id"]]  # kept
    resumed = json_of(invoke("destination", "update", did, "--resume", "--all-segments", "--clear-headers", "--json",
                           env=env))
    assert resumed["status"] == "ACTIVE" and resumed["segmentIds"] is None and resumed["headers"] == {}
    rotated = json_of(invoke("destination", "rotate-secret", did, "--grace", "1h", "--json", env=env))
    assert rotated["secret"] != destination["secret"] and rotated["previousSecretExpiresAt"]
    deliveries = json_of(invoke("destination", "deliveries", did, "--status", "failed", "--json", env=env))
    assert deliveries == {"items": [], "nextCursor": None}  # no delivery worker runs here
    replayed = invoke("destination", "replay", did, "--from", "1h", "--failed-only", env=env)
    assert replayed.exit_code == 0 and f"requeued 0 deliveries of {did}" in replayed.stdout
    deleted = invoke("destination", "delete", did, env=env)
    assert deleted.exit_code == 0 and f"deleted destination {did}" in deleted.stdout
    gone = run("destination", "get", did, env=env)
    assert gone.returncode == 1 and "(HTTP 404)" in one_error(gone.stderr)


def test_a_destination_the_api_refuses_is_one_line(services: dict[str, str]) -> None:
    url = "--url", "http://127.0.0.1:9/hooks/x"
    assert invoke("destination", "create", "twice", *url, env=services).exit_code == 0
    again = run("destination", "create", "TWICE", *url, env=services)
    assert again.returncode == 1 and "(HTTP 409)" in one_error(again.stderr)
    missing = invoke("destination", "create", "nowhere", *url, "--segment", "00000000-0000-0000-0000-000000000000",
                     env=services)
    assert missing.exit_code == 1 and "00000000-0000-0000-0000-000000000000" in one_error(missing.stderr)
    bad = invoke("destination", "create", "ftp", "--url", "ftp://example.com/x", env=services)
    assert bad.exit_code == 1 and "(HTTP 422)" in one_error(bad.stderr)
    created = json_of(invoke("destination", "create", "closed", *url, "--json", env=services))
    refused = invoke("destination", "test", str(created["id"]), env=services)  # nothing listens on port 9
    assert refused.exit_code == 1 and "did not accept the test call" in one_error(refused.stderr)


def test_a_user_read_by_a_linked_anonymous_id_shows_the_user_and_its_aliases(services: dict[str, str]) -> None:
    with psycopg.connect(services["AM_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO user_profiles (user_id, profile) VALUES (%s, %s)", ("cli-alice", Jsonb({
            "userId": "cli-alice", "traits": {"plan": "pro"}, "totalSpent": 1200, "recentEvents": ["e-1", "e-2"]})))
        for alias in ("cli-anon-1", "cli-anon-2"):
            conn.execute("INSERT INTO user_aliases (anonymous_id, user_id) VALUES (%s, 'cli-alice')", (alias,))
    shown = invoke("user", "profile", "cli-anon-1", env=services)
    assert shown.exit_code == 0, shown.output
    assert "profile of cli-alice (asked as cli-anon-1)" in shown.stdout
    assert "cli-anon-1, cli-anon-2" in shown.stdout and "recentEvents" not in shown.stdout
    profile = json_of(invoke("user", "profile", "cli-anon-2", "--after", "e-2", "--json", env=services))
    assert (profile["userId"], profile["resolvedFrom"], profile["totalSpent"]) == ("cli-alice", "cli-anon-2", 1200)
    assert profile["aliases"] == ["cli-anon-1", "cli-anon-2"] and profile["anonymous"] is False
    segments = json_of(invoke("user", "segments", "cli-anon-1", "--json", env=services))
    assert segments == {"userId": "cli-alice", "resolvedFrom": "cli-anon-1", "segments": []}
    table = invoke("user", "segments", "cli-anon-1", env=services)
    assert table.exit_code == 0  # the title wraps to the width of the empty table
    assert "segments of cli-alice (asked as cli-anon-1)" in " ".join(table.stdout.split())
    pending = run("user", "profile", "cli-anon-1", "--after", "e-9", "--wait", "0.2", env=services)
    assert pending.returncode == 1 and pending.stdout == ""
    assert one_error(pending.stderr) == "error: Segment API: event e-9 is not applied yet after 0.2 s"
    assert "--wait" in pending.stderr.splitlines()[-1]  # the hint
    too_long = invoke("user", "profile", "cli-alice", "--after", "e-1", "--wait", "11", env=services)
    assert too_long.exit_code == 1 and "(HTTP 422)" in one_error(too_long.stderr)


def test_identify_then_delete_a_user_from_the_command_line(services: dict[str, str]) -> None:
    linked = invoke("user", "identify", "cli-dora", "cli-visitor", "--trait", "plan=pro", env=services)
    assert linked.exit_code == 0 and linked.stdout.strip() == "linked cli-visitor to cli-dora", linked.output
    again = invoke("user", "identify", "cli-dora", "cli-visitor", env=services)
    assert again.stdout.strip() == "cli-visitor was already linked to cli-dora"
    taken = run("user", "identify", "cli-erin", "cli-visitor", env=services)
    assert taken.returncode == 1 and "already linked to another user" in one_error(taken.stderr)
    same = invoke("user", "identify", "cli-dora", "cli-dora", env=services)
    assert same.exit_code == 1 and "(HTTP 422)" in one_error(same.stderr)

    with psycopg.connect(services["AM_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO user_profiles (user_id, profile) VALUES (%s, %s)",
                     ("cli-dora", Jsonb({"userId": "cli-dora", "totalSpent": 5})))
    erased = invoke("user", "delete", "cli-visitor", "--yes", env=services)  # by the alias: the person goes
    assert erased.exit_code == 0, erased.output
    assert "erasure of user cli-dora and its 1 alias(es): cli-visitor under way" in " ".join(erased.stdout.split())
    with psycopg.connect(services["AM_DATABASE_URL"]) as conn:
        audit = conn.execute("SELECT user_id_hash, aliases FROM user_deletions").fetchall()
    assert [(len(h), n) for h, n in audit] == [(64, 1)] and "cli-dora" not in audit[0][0]
    unknown = invoke("user", "delete", "cli-nobody", "--yes", env=services)
    assert unknown.exit_code == 1 and "(HTTP 404)" in one_error(unknown.stderr)


def test_segment_insights_from_the_command_line(services: dict[str, str]) -> None:
    ids = []
    for name, members in (("Insights A", ["ins-ann", "ins-ben", "ins-cid"]), ("Insights B", ["ins-ben", "ins-cid"]),
                          ("Insights C", ["ins-cid", "ins-dan"])):
        segment_id = str(json_of(invoke("segment", "create", name, "--static", "--json", env=services))["id"])
        added = invoke("segment", "members", segment_id, *(f"--add={m}" for m in members), env=services)
        assert added.exit_code == 0, added.output
        ids.append(segment_id)
    a, b, c = ids
    assert json_of(invoke("segment", "overlap", a, b, c, "--json", env=services)) == {
        "sizes": {a: 3, b: 2, c: 2}, "intersection": 1, "pairs": [{"a": a, "b": b, "intersection": 2},
                                                                  {"a": a, "b": c, "intersection": 1},
                                                                  {"a": b, "b": c, "intersection": 1}]}
    table = invoke("segment", "overlap", a, b, env=services)
    assert table.exit_code == 0 and table.stdout.rstrip().endswith("in all 2: 2"), table.output
    assert f"│ Insights A │ {a} │       3 │" in table.stdout and "│ Insights A │ Insights B │       2 │" in table.stdout
    one = run("segment", "overlap", a, env=services)
    assert one.returncode == 1 and "(HTTP 422)" in one_error(one.stderr) and "at least 2" in one.stderr

    history = json_of(invoke("segment", "history", a, "--json", env=services))
    assert sum(p["entered"] for p in history["points"]) == 3 and history["points"][-1]["size"] == 3
    window = invoke("segment", "history", a, "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T03:00:00Z",
                    env=services)
    assert window.exit_code == 0 and [line.split("│")[1].strip() for line in window.stdout.splitlines()
                                      if line.startswith("│")] == [f"2026-01-01T0{h}:00:00Z" for h in range(3)]
    backwards = run("segment", "history", a, "--from", "2026-01-02T00:00:00Z", "--to", "2026-01-01T00:00:00Z",
                    env=services)
    assert backwards.returncode == 1 and "(HTTP 422)" in one_error(backwards.stderr)
    assert "must be before to" in backwards.stderr

    with psycopg.connect(services["AM_DATABASE_URL"], autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO user_profiles (user_id, profile) VALUES (%s, %s)", [
            (user, Jsonb({"userId": user, "traits": traits})) for user, traits in (
                ("ins-ann", {"country": "de"}), ("ins-ben", {"country": "de"}), ("ins-cid", {"country": "[/x]"}))])
    assert json_of(invoke("segment", "breakdown", a, "--trait", "country", "--limit", "1", "--json", env=services)) == {
        "segmentId": a, "trait": "country", "members": 3, "values": [{"value": "de", "count": 2}], "other": 1,
        "missing": 0}
    shown = invoke("segment", "breakdown", b, "--trait", "country", env=services)
    assert shown.exit_code == 0, shown.output
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in shown.stdout.splitlines()
            if line.startswith("│")]
    assert rows == [["[/x]", "1", "50.0%"], ["de", "1", "50.0%"], ["(other)", "0", "0.0%"],
                    ["(missing)", "0", "0.0%"]]  # a value is shown as it is, never as markup; ties by JSON text
    bad = run("segment", "breakdown", a, "--trait", "no way", env=services)
    assert bad.returncode == 1 and "(HTTP 422)" in one_error(bad.stderr)


def test_campaign_sending_rules_from_the_command_line(services: dict[str, str]) -> None:
    segment_id = _static_segment(services, "rules-cli", ["nobody-with-a-profile"])
    created = invoke("campaign", "create", "ruled", "--segment", segment_id, "--subject", "s", "--body", "b",
                     "--body-html", "<p>{{ firstName }}</p>", "--frequency-cap", "2/P1D",
                     "--quiet-hours", "21:00-08:00", "--quiet-timezone", "Europe/Paris", "--json", env=services)
    assert created.exit_code == 0, created.output
    campaign = json.loads(created.stdout)
    assert campaign["frequencyCap"] == {"max": 2, "within": "P1D"} and campaign["template"]["bodyHtml"]
    assert campaign["quietHours"] == {"start": "21:00", "end": "08:00", "timezone": "Europe/Paris"}
    # its one recipient has no profile, so no address: skipped at the fan-out, and the campaign is done
    done = invoke("campaign", "get", campaign["id"], "--wait", "--timeout", "30", "--json", env=services)
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["status"] == "COMPLETED" and json.loads(done.stdout)["counts"]["skipped"] == 1
    table = invoke("campaign", "get", campaign["id"], env=services)
    assert "2 within P1D" in table.stdout and "21:00-08:00 (Europe/Paris)" in table.stdout
    for args, message in ((["--frequency-cap", "two"], "MAX/DURATION"), (["--quiet-hours", "21:00"], "START-END"),
                          (["--frequency-cap", "2/P1D", "--no-frequency-cap"], "not both"),
                          (["--quiet-hours", "21:00-08:00", "--quiet-timezone", "Mars/Olympus"], "IANA")):
        refused = invoke("campaign", "create", "x", "--segment", segment_id, "--subject", "s", "--body", "b", *args,
                         env=services)
        assert refused.exit_code != 0 and message in refused.stderr, (args, refused.output)
