"""Scenario files, templating, expectations and JUnit output (the HTTP side is a scripted fake caller)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from amctl.local.mail_sink import store_path
from amctl.local.webhook_sink import ReceivedRequest, RequestStore
from amctl.local.webhook_sink import store_path as webhook_store_path
from amctl.scenario.expect import ExpectationFailed, check, lookup
from amctl.scenario.http import MAIL_SINK, WEBHOOK_SINK, ServiceHttp
from amctl.scenario.junit import write_junit
from amctl.scenario.model import ScenarioError, load_scenario
from amctl.scenario.runner import ScenarioRunner, StepFailed, render
from amctl.settings import AmctlSettings, Target

pytestmark = pytest.mark.unit

DOC = {"segments": [{"segmentId": "a", "enteredAt": 1}, {"segmentId": "b"}], "total": 2}


def test_lookup_paths() -> None:
    assert lookup(DOC, "segments[*].segmentId") == ["a", "b"]
    assert lookup(DOC, "segments[1].segmentId") == "b"
    assert lookup(DOC, "total") == 2


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        ({"path": "total", "equals": 3}, "expected 3, got 2"),
        ({"path": "segments[*].segmentId", "contains": "c"}, "expected to contain 'c'"),
        ({"path": "segments", "length": 1}, "expected length 1"),
        ({"path": "missing", "exists": True}, "expected present, got <missing>"),
    ],
)
def test_failed_expectations_say_what_was_seen(expectation: dict[str, Any], message: str) -> None:
    with pytest.raises(ExpectationFailed, match=message):
        check(DOC, expectation)


def test_passing_expectations() -> None:
    check(DOC, {"path": "segments[*].segmentId", "contains": "a", "not_contains": "z", "length": 2})
    check(DOC, {"path": "total", "gte": 2, "lte": 2, "exists": True})


def test_render_keeps_native_types() -> None:
    variables = {"run": "r1", "seg": {"id": "s-1", "version": 2}}
    assert render({"name": "vip {{ run }}", "v": "{{ seg.version }}", "l": ["{{ seg.id }}"]}, variables) == {
        "name": "vip r1", "v": 2, "l": ["s-1"],
    }


@pytest.mark.parametrize("run", ["5e123456", "12345678", "0x1f", "1_000"])
def test_a_lone_string_stays_a_string_whatever_it_looks_like(run: str) -> None:
    # read back as a Python literal, 5e123456 would be an infinite float and 12345678 an int
    assert render({"v": "{{ run }}", "s": "x-{{ run }}"}, {"run": run}) == {"v": run, "s": f"x-{run}"}


def test_an_undefined_name_in_a_lone_expression_fails_the_step_naming_it() -> None:
    with pytest.raises(StepFailed, match="'missing' is undefined"):
        render("{{ missing }}", {})


class ScriptedHttp:
    """Answers calls from a script, recording what was asked."""

    def __init__(self, answers: list[tuple[int, Any]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, str, Any]] = []

    def call(self, service: str, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        self.calls.append((service, method, path, json))
        return self.answers.pop(0)

    def url(self, service: str, path: str) -> str:
        return f"http://{service}{path}"

    def auth_headers(self) -> dict[str, str]:
        return {}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_a_failing_step_names_itself_and_skips_the_rest(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, """
name: demo
steps:
  - name: create
    create_segment: {name: "vip {{ run }}", type: DYNAMIC}
    save: seg
  - name: wait for membership
    wait_until: {path: "/api/users/u1/segments", expect: {path: "segments[*].segmentId", contains: "{{ seg.id }}"},
                 timeout: 200ms, interval: 50ms}
  - name: never reached
    sleep: {duration: 1s}
"""))
    http = ScriptedHttp([(201, {"id": "s-9"})] + [(200, {"segments": []})] * 20)
    result = ScenarioRunner(http).run(scenario)
    assert not result.passed
    assert http.calls[0][2] == "/api/segments" and http.calls[0][3]["name"].startswith("vip ")
    assert http.calls[1][2] == "/api/users/u1/segments"
    create, wait, never = result.steps
    assert create.error is None
    assert wait.error is not None and "did not hold within 0.2 s" in wait.error and "'s-9'" in wait.error
    assert never.skipped
    out = tmp_path / "junit.xml"
    write_junit([result], out)
    suite = ET.parse(out).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("tests") == "3"


def test_bad_scenario_files_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="name exactly one of"):
        load_scenario(write(tmp_path, "name: x\nsteps:\n  - name: two kinds\n    sleep: {}\n    load: {}\n"))
    with pytest.raises(ScenarioError, match="list of 'steps'"):
        load_scenario(write(tmp_path, "name: x\n"))


def test_every_shipped_scenario_loads() -> None:
    from amctl.commands.scenario import DEFAULT_DIR
    from amctl.scenario.model import find_scenarios

    names = {load_scenario(path).name for path in find_scenarios(DEFAULT_DIR)}
    assert {"basic-segmentation", "rule-engine-testing", "anonymous-to-known"} <= names


def test_the_mail_sink_service_reads_one_campaigns_mails(tmp_path: Path) -> None:
    store = store_path(tmp_path)
    store.parent.mkdir(parents=True)
    mail = {"received_at": "2026-01-01T00:00:00Z", "mail_from": "am@example.com", "subject": "Hi", "body": "b",
            "user_id": "u", "message_id": "<m>"}
    store.write_text("\n".join(json.dumps({**mail, "rcpt_to": [to], "campaign_id": c})
                               for to, c in (("z@x", "c1"), ("a@x", "c1"), ("b@x", "c2"))) + "\n")
    http = ServiceHttp(AmctlSettings(state_dir=tmp_path))
    status, mails = http.call(MAIL_SINK, "GET", "/campaigns/c1")
    assert status == 200 and [m["rcpt_to"] for m in mails] == [["a@x"], ["z@x"]]
    assert http.call(MAIL_SINK, "GET", "/campaigns/none") == (200, [])
    assert http.call(MAIL_SINK, "POST", "/campaigns/c1")[0] == 404
    remote = ServiceHttp(AmctlSettings(state_dir=tmp_path, target=Target.K8S))
    status, message = remote.call(MAIL_SINK, "GET", "/campaigns/c1")
    assert status == 0 and "local target only" in message


def test_the_webhook_sink_service_lists_one_paths_calls_and_scenarios_know_its_url(tmp_path: Path) -> None:
    store = RequestStore(webhook_store_path(tmp_path))
    for path, user in (("/hooks/crm", "ann"), ("/hooks/ads", "ben"), ("/hooks/crm", "cat")):
        store.keep(ReceivedRequest("2026-01-01T00:00:00+00:00", "POST", path, 200, {"webhook-id": f"m-{user}"},
                                   {"content-type": "application/json"}, json.dumps({"userId": user})))
    settings = AmctlSettings(state_dir=tmp_path)
    http = ServiceHttp(settings)
    status, calls = http.call(WEBHOOK_SINK, "GET", "/hooks/crm")
    assert status == 200 and [c["body"]["userId"] for c in calls] == ["ann", "cat"]
    assert calls[0]["headers"] == {"content-type": "application/json", "webhook-id": "m-ann"}
    assert http.call(WEBHOOK_SINK, "GET", "/hooks/none") == (200, [])
    assert http.call(WEBHOOK_SINK, "POST", "/hooks/crm")[0] == 404
    assert http.call(WEBHOOK_SINK, "GET", "/mails")[0] == 404
    remote = ServiceHttp(AmctlSettings(state_dir=tmp_path, target=Target.K8S))
    assert remote.call(WEBHOOK_SINK, "GET", "/hooks/crm") == (0, "the webhook receiver runs on the local target only")
    scenario = load_scenario(write(tmp_path, """
name: hook
steps:
  - name: a destination to the receiver
    request: {service: communication, method: POST, path: /api/destinations,
              json: {url: "{{ webhook_sink_url }}/hooks/crm-{{ run }}"}}
"""))
    scripted = ScriptedHttp([(201, {})])
    ScenarioRunner(scripted, variables=http.template_variables()).run(scenario)
    url = scripted.calls[0][3]["url"]
    assert url.startswith(f"http://127.0.0.1:{settings.ports.webhook_sink}/hooks/crm-") and "{{" not in url


class RunAwareHttp(ScriptedHttp):
    """Scripted answers that may name the run's ids: each answer is built from the run id, read from the
    name of the segment the scenario creates first (`... {{ run }}`)."""

    def __init__(self, answers: list[Callable[[str], tuple[int, Any]]]) -> None:
        super().__init__([])
        self.builders = answers
        self.run = ""

    def call(self, service: str, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        if not self.calls:
            self.run = str(json["name"]).rsplit(" ", 1)[1]
        self.calls.append((service, method, path, json))
        return self.builders.pop(0)(self.run)


def test_the_anonymous_to_known_scenario_passes_when_the_services_answer_as_designed() -> None:
    """The shipped scenario run against scripted answers: its templates render (the eventIds the
    Ingestion API gave go into `after`), the identify step posts the link, and every expectation holds."""
    from amctl.commands.scenario import DEFAULT_DIR

    def profile(run: str, **changes: Any) -> dict[str, Any]:
        return {"userId": f"shopper-{run}", "resolvedFrom": None, "anonymous": False, "aliases": [f"visitor-{run}"],
                "traits": {"email": f"shopper-{run}@example.com"}, "totalSpent": 1200, "purchaseCount": 2, **changes}

    def segments(run: str, **changes: Any) -> dict[str, Any]:
        return {"userId": f"shopper-{run}", "segments": [{"segmentId": "s-hv"}], **changes}

    scenario = load_scenario(DEFAULT_DIR / "anonymous-to-known.yaml")
    http = RunAwareHttp([
        lambda run: (201, {"id": "s-hv"}),
        lambda run: (202, {"eventId": "ev-1", "status": "accepted"}),
        lambda run: (202, {"eventId": "ev-2", "status": "accepted"}),
        lambda run: (200, {"userId": f"visitor-{run}", "anonymous": True, "totalSpent": 1200}),
        lambda run: (202, {"status": "linked"}),
        lambda run: (200, segments(run)),
        lambda run: (200, profile(run)),
        lambda run: (200, profile(run, resolvedFrom=f"visitor-{run}")),
        lambda run: (202, {"eventId": "ev-3", "status": "accepted"}),
        lambda run: (200, profile(run, totalSpent=1300, purchaseCount=3)),
        lambda run: (200, segments(run)),
        lambda run: (200, segments(run, resolvedFrom=f"visitor-{run}")),
    ])
    result = ScenarioRunner(http).run(scenario)
    assert result.passed, [s.error for s in result.steps if s.error]
    assert http.builders == []  # every call the script expected was made
    known, visitor = f"shopper-{http.run}", f"visitor-{http.run}"
    paths = [path for _, _, path, _ in http.calls]
    assert paths[3] == f"/api/users/{visitor}/profile?after=ev-2"
    assert paths[9] == f"/api/users/{known}/profile?after=ev-3&wait=5"
    assert http.calls[4] == ("ingestion", "POST", "/api/identify", {
        "userId": known, "anonymousId": visitor, "traits": {"email": f"{known}@example.com"}})
    assert http.calls[8][3] == {"anonymousId": visitor, "eventType": "purchase", "properties": {"amount": 100}}


def test_an_identify_the_service_refuses_fails_the_step_saying_so(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, """
name: refused
steps:
  - identify: {userId: bob, anonymousId: anon-1}
"""))
    result = ScenarioRunner(ScriptedHttp([(409, {"detail": "anon-1 belongs to another user"})])).run(scenario)
    assert result.steps[0].error == ("identify 'anon-1' as 'bob' was not accepted: 409 "
                                     "{'detail': 'anon-1 belongs to another user'}")
