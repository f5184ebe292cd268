"""Each command's expected failures, with nothing running: one `error:` line (and its hint), no traceback,
exit status 1 for a failure and 2 for a usage error."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from amctl.local import processes
from amctl.local.postgres import EmbeddedPostgres
from amctl.local.stack import LocalStack
from amctl.settings import AmctlSettings, Ports
from tests.cli import invoke, one_error, run

pytestmark = pytest.mark.unit
RULES = '{"conditions":[{"field":"totalSpent","operator":"gt","value":1000}]}'


@pytest.fixture
def offline(tmp_path: Path) -> dict[str, str | None]:
    """An environment where nothing answers: every port free, an empty state dir, a kubeconfig whose
    one context points at a closed port."""
    env: dict[str, str | None] = {f"AMCTL_PORT_{name.upper()}": str(processes.free_port())
                                  for name in Ports.model_fields}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "rancher-desktop",
        "clusters": [{"name": "nowhere", "cluster": {"server": f"https://127.0.0.1:{processes.free_port()}"}}],
        "users": [{"name": "tester", "user": {"token": "test-token"}}],
        "contexts": [{"name": "rancher-desktop", "context": {"cluster": "nowhere", "user": "tester"}}],
    }))
    return {**env, "AMCTL_STATE_DIR": str(tmp_path / "state"), "KUBECONFIG": str(kubeconfig), "AMCTL_TARGET": None,
            "AMCTL_API_KEY": None, "AMCTL_PROMETHEUS_BINARY": str(tmp_path / "no-prometheus"), "COLUMNS": "200"}


SEGMENT_API = "cannot reach the Segment API at http://127.0.0.1:"
COMMUNICATION_API = "cannot reach the Communication API at http://127.0.0.1:"
INGESTION_API = "cannot reach the Ingestion API at http://127.0.0.1:"

FAILURES: list[tuple[list[str], int, str]] = [
    # the services are not running
    (["segment", "create", "vip", "--rules", RULES], 1, SEGMENT_API),
    (["segment", "list"], 1, SEGMENT_API),
    (["segment", "get", "s1"], 1, SEGMENT_API),
    (["segment", "update", "s1", "--name", "n"], 1, SEGMENT_API),
    (["segment", "delete", "s1"], 1, SEGMENT_API),
    (["segment", "preview", "--rules", RULES], 1, SEGMENT_API),
    (["segment", "members", "s1"], 1, SEGMENT_API),
    (["segment", "stats", "s1"], 1, SEGMENT_API),
    (["user", "segments", "u1"], 1, SEGMENT_API),
    (["user", "profile", "u1"], 1, SEGMENT_API),
    (["user", "profile", "anon-1", "--after", "e-1", "--wait", "0.5"], 1, SEGMENT_API),
    (["user", "delete", "u1", "--yes"], 1, SEGMENT_API),
    (["user", "identify", "alice", "anon-1", "--trait", "plan=pro"], 1, INGESTION_API),
    (["campaign", "create", "c", "--segment", "s1", "--subject", "s", "--body", "b"], 1, COMMUNICATION_API),
    (["campaign", "list"], 1, COMMUNICATION_API),
    (["campaign", "get", "c1"], 1, COMMUNICATION_API),
    (["campaign", "cancel", "c1"], 1, COMMUNICATION_API),
    (["events", "send", "--user", "u1", "--type", "purchase", "-p", "amount=10"], 1, INGESTION_API),
    (["events", "send", "--rate", "20", "--duration", "500ms"], 1, INGESTION_API),
    (["smoke"], 1, "not healthy: postgres, s3, kafka"),
    (["top", "--once", "--interval", "0.5"], 1, "nothing is running"),
    (["bench", "--soak", "90s"], 1, "nothing is running"),
    # nothing was ever started here
    (["logs", "segment-api"], 1, "no log yet for segment-api"),
    (["logs", "nope"], 1, "unknown component 'nope'"),
    (["up", "--with-monitoring"], 1, "Prometheus is not installed"),
    # options that do not go together, or values that cannot be used
    (["events", "send"], 2, "choose one of: --user (one event), --file (JSON lines), --rate/--ramp (load)"),
    (["events", "send", "--user", "u1", "--rate", "5"], 2, "choose one of"),
    (["events", "send", "--user", "u1", "-p", "amount"], 2, "--prop 'amount' is not KEY=VALUE"),
    (["events", "send", "--rate", "5", "--batch", "0"], 2, "--batch must be between 1 and 500"),
    (["events", "send", "--rate", "5", "--duration", "soon"], 2, "'soon' is not a duration"),
    (["events", "send", "--ramp", "fast"], 2, "--ramp: 'fast' is not rate:duration"),
    (["bench", "--soak", "an hour"], 2, "--soak: 'an hour' is not a duration"),
    (["bench", "--soak", "0s"], 2, "--soak: the duration must be more than zero"),
    (["bench", "--soak", "10m", "--every", "often"], 2, "--every: 'often' is not a duration"),
    (["bench", "--soak", "30s", "--every", "1m"], 2, "--every (60 s) must not be longer than --soak (30 s)"),
    (["bench", "--soak", "1h", "--only", "email"], 2, "--soak runs on its own"),
    (["events", "send", "--file", "/no/such/events.jsonl"], 1, "cannot read /no/such/events.jsonl"),
    (["segment", "create", "vip", "--rules", "{"], 2, "--rules is not JSON"),
    (["segment", "create", "vip", "--rules", "[1]"], 2, "rules must be a JSON object"),
    (["segment", "create", "vip", "--rules", RULES, "--rules-file", "r.yaml"], 2, "give --rules or --rules-file"),
    (["segment", "create", "vip", "--rules-file", "/no/such/rules.yaml"], 1, "cannot read the rules"),
    (["segment", "update", "s1"], 2, "nothing to change"),
    (["user", "identify", "alice", "anon-1", "--trait", "plan"], 2, "--trait 'plan' is not KEY=VALUE"),
    (["user", "identify", "alice"], 2, "Missing argument 'anonymous_id'"),
    (["segment", "preview"], 2, "give the rules to preview"),
    (["segment", "create"], 2, "Missing argument 'name'"),
    (["status", "--bogus"], 2, "No such option: --bogus"),
    (["scenario", "run"], 2, "no scenario given"),
    (["scenario", "run", "nope"], 1, "no scenario 'nope' (known: "),
    # the other target's options and commands
    (["up", "--target", "k8s", "--durable-broker"], 1, "--durable-broker/--memory-broker choose the local broker"),
    (["up", "--target", "k8s", "--without-monitoring"], 1, "--with-monitoring/--without-monitoring choose"),
    (["--target", "k8s", "logs", "kafka"], 1, "this command runs on the local target only, not k8s"),
    (["--target", "k8s", "top"], 1, "amctl top reads the local stack"),
    (["--target", "k8s", "bench", "--soak", "1m"], 1, "amctl bench --soak runs against the local stack"),
    (["render", "--target", "local"], 1, "this command is for the k8s target, not local"),
    # k8s: an unknown profile, an unknown context, a cluster that does not answer
    (["render", "--profile", "demo-16g"], 1, "no profile 'demo-16g' (known: demo-8g, prod)"),
    (["budget", "--target", "k8s", "--profile", "demo-16g"], 1, "no profile 'demo-16g'"),
    (["images", "build", "--profile", "demo-16g"], 1, "no profile 'demo-16g'"),
    (["up", "--target", "k8s", "--profile", "demo-16g"], 1, "no profile 'demo-16g'"),
    (["up", "--target", "k8s", "--context", "prod-cluster"], 1, "kube context 'prod-cluster' not found"),
    (["down", "--target", "k8s", "--context", "prod-cluster"], 1, "kube context 'prod-cluster' not found"),
    (["smoke", "--target", "k8s", "--context", "prod-cluster"], 1, "kube context 'prod-cluster' not found"),
    (["status", "--target", "k8s"], 1, "cannot reach the Kubernetes API of context 'rancher-desktop'"),
    (["status", "--target", "k8s", "--kubeconfig", "/no/such/kubeconfig"], 1, "no usable kubeconfig"),
]


@pytest.mark.parametrize(("args", "code", "message"), FAILURES, ids=[" ".join(a) for a, _, _ in FAILURES])
def test_an_expected_failure_is_one_line(offline: dict[str, str | None], args: list[str], code: int,
                                         message: str) -> None:
    result = invoke(*args, env=offline)
    assert result.exit_code == code, result.output
    assert message in one_error(result.stderr)


def test_images_build_without_a_builder_says_how_to_get_one(offline: dict[str, str | None], tmp_path: Path) -> None:
    result = invoke("images", "build", env={**offline, "PATH": str(tmp_path / "empty")})
    assert result.exit_code == 1
    assert "neither nerdctl nor docker is on PATH" in one_error(result.stderr)


def test_markup_in_user_text_is_printed_as_it_is(offline: dict[str, str | None]) -> None:
    result = invoke("logs", "[/x]", env=offline)
    assert result.exit_code == 1
    assert one_error(result.stderr) == "error: unknown component '[/x]'"
    scenario = invoke("scenario", "run", "[bold]x[/bold]", env=offline)
    assert "error: no scenario '[bold]x[/bold]'" in one_error(scenario.stderr)


def test_the_executable_says_a_refused_call_in_one_line(offline: dict[str, str | None]) -> None:
    env = {k: v for k, v in {**os.environ, **offline}.items() if v is not None}
    result = run("segment", "get", "[/x]", env=env)
    assert result.returncode == 1
    assert one_error(result.stderr).startswith(f"error: {SEGMENT_API}{offline['AMCTL_PORT_SEGMENT_API']}")


@pytest.fixture
def reachable_state_dir() -> Iterator[Path]:
    """A state dir PostgreSQL's unprivileged user can enter (when the suite runs as root)."""
    path = Path(tempfile.mkdtemp(prefix="amctl-cli-"))
    path.chmod(0o755)
    yield path / "state"
    shutil.rmtree(path, ignore_errors=True)


def test_a_failed_initdb_stops_up_with_one_line(offline: dict[str, str | None], reachable_state_dir: Path) -> None:
    env = {**offline, "AMCTL_STATE_DIR": str(reachable_state_dir)}
    settings = AmctlSettings(state_dir=reachable_state_dir)
    data_dir = EmbeddedPostgres.for_state_dir(reachable_state_dir, settings.ports.postgres).data_dir
    data_dir.mkdir(parents=True)
    (data_dir / "left-over").write_text("not a database")  # initdb refuses a directory that is not empty
    result = invoke("up", env=env)
    assert result.exit_code == 1, result.output
    assert one_error(result.stderr).startswith("error: initdb failed: ")
    assert str(data_dir) in result.stderr  # the hint names the directory
    stopped = json.loads(invoke("status", "--json", env=env).stdout)
    assert {row["state"] for row in stopped} == {"stopped"}
    assert LocalStack(AmctlSettings(state_dir=reachable_state_dir)).status().failing() == []


def test_down_status_and_smoke_answer_json_on_the_local_target(offline: dict[str, str | None]) -> None:
    down = invoke("down", "--json", env=offline)
    assert down.exit_code == 0 and json.loads(down.stdout) == {"stopped": [], "summary": "nothing was running"}
    status = invoke("status", "--json", env=offline)
    assert status.exit_code == 0
    rows = json.loads(status.stdout)
    assert [row["name"] for row in rows][:3] == ["postgres", "s3", "kafka"]
    assert {row["state"] for row in rows} == {"stopped"}
    smoke = invoke("smoke", "--json", env=offline)
    assert smoke.exit_code == 1
    report = json.loads(smoke.stdout)  # stdout holds the JSON alone, the failure is on stderr
    assert report["passed"] is False and report["scenario"] is None
    assert [row["name"] for row in report["components"]] == [row["name"] for row in rows]
    assert one_error(smoke.stderr).startswith("error: not healthy: postgres, s3, kafka")
