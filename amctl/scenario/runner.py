"""Runs a scenario step by step against the services; the first failing step ends it.

Strings in a step may use `{{ … }}`: `run` is a short id unique to this run (so names never
collide between runs), `webhook_sink_url` the local webhook receiver's base URL, and every step's
`save:` name holds that step's JSON response.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from jinja2 import Environment, StrictUndefined, TemplateError, Undefined

from amctl.errors import AmctlError
from amctl.load.profile import EventFactory, parse_mix
from amctl.load.runner import LoadPlan, run_load
from amctl.load.schedule import ArrivalSchedule, Stage, parse_duration
from amctl.load.thresholds import parse_threshold
from amctl.scenario.expect import ExpectationFailed, check
from amctl.scenario.http import ServiceHttp
from amctl.scenario.model import Scenario, ScenarioResult, Step, StepResult, load_scenario
from amctl.settings import AmctlSettings

_env = Environment(undefined=StrictUndefined)
# a string that is one `{{ expression }}` and nothing else
_LONE_EXPRESSION = re.compile(r"\{\{((?:(?!\{\{|\}\}).)*)\}\}", re.DOTALL)


class HttpCaller(Protocol):
    def call(self, service: str, method: str, path: str, json: Any = None) -> tuple[int, Any]: ...

    def url(self, service: str, path: str) -> str: ...

    def auth_headers(self) -> dict[str, str]: ...


class StepFailed(AmctlError):
    """A step did not do what the scenario says it should."""


def render(value: Any, variables: dict[str, Any]) -> Any:
    """Render templates inside strings, lists and mappings; a lone `{{ x }}` keeps x's type.

    A lone expression is evaluated, not rendered and parsed back: a string such as the run id `5e123456`
    stays a string (read back as a literal it would be a float, infinite at that).
    """
    if isinstance(value, str) and "{{" in value:
        try:
            lone = _LONE_EXPRESSION.fullmatch(value)
            if lone is None:
                return _env.from_string(value).render(variables)
            result = _env.compile_expression(lone.group(1), undefined_to_none=False)(variables)
            if isinstance(result, Undefined):
                str(result)  # StrictUndefined raises here, naming what is missing
        except TemplateError as exc:
            raise StepFailed(f"template {value!r}: {exc}") from None
        return result
    if isinstance(value, list):
        return [render(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: render(v, variables) for k, v in value.items()}
    return value


def _expectations(spec: dict[str, Any]) -> list[dict[str, Any]]:
    expect = spec.get("expect", [])
    return expect if isinstance(expect, list) else [expect]


class ScenarioRunner:
    def __init__(self, http: HttpCaller, on_step: Callable[[StepResult], None] | None = None,
                 variables: Mapping[str, Any] | None = None) -> None:
        self.http = http
        self.on_step = on_step
        self.variables = dict(variables or {})  # template variables besides `run` and the saved responses

    def run(self, scenario: Scenario) -> ScenarioResult:
        result = ScenarioResult(name=scenario.name)
        variables: dict[str, Any] = {**self.variables, "run": uuid.uuid4().hex[:8]}
        started = time.perf_counter()
        failed = False
        for step in scenario.steps:
            if failed:
                result.steps.append(StepResult(name=step.name, skipped=True))
                continue
            step_started = time.perf_counter()
            outcome = StepResult(name=step.name)
            try:
                response, outcome.detail = self._run_step(step, render(step.spec, variables))
                if step.save:
                    variables[step.save] = response
            except AmctlError as exc:  # the step failed, or its spec cannot be run (a bad duration, say)
                outcome.error = str(exc)
                failed = True
            except KeyError as exc:
                outcome.error = f"the step needs {exc}"
                failed = True
            outcome.seconds = time.perf_counter() - step_started
            result.steps.append(outcome)
            if self.on_step is not None:
                self.on_step(outcome)
        result.seconds = time.perf_counter() - started
        return result

    # -- steps ---------------------------------------------------------------------------

    def _run_step(self, step: Step, spec: dict[str, Any]) -> tuple[Any, str]:
        handler = getattr(self, f"_{step.kind}")
        return handler(spec)  # type: ignore[no-any-return]

    def _request(self, spec: dict[str, Any]) -> tuple[Any, str]:
        service, method, path = spec.get("service", "segment"), spec.get("method", "GET"), spec["path"]
        status, body = self.http.call(service, method, path, spec.get("json"))
        wanted = spec.get("status")
        if wanted is not None and status not in (wanted if isinstance(wanted, list) else [wanted]):
            raise StepFailed(f"{method} {path}: expected status {wanted}, got {status}: {body}")
        for expectation in _expectations(spec):
            check(body, expectation)
        return body, f"{method} {path} → {status}"

    def _create_segment(self, spec: dict[str, Any]) -> tuple[Any, str]:
        return self._request({"service": "segment", "method": "POST", "path": "/api/segments",
                              "json": spec, "status": 201})

    def _delete_segment(self, spec: dict[str, Any]) -> tuple[Any, str]:
        return self._request({"service": "segment", "method": "DELETE", "path": f"/api/segments/{spec['id']}",
                              "status": [200, 204]})

    def _send_events(self, spec: dict[str, Any]) -> tuple[Any, str]:
        events = list(spec.get("events", []))
        generate = spec.get("generate")
        if generate:
            factory = EventFactory(users=int(generate.get("users", 100)), mix=parse_mix(generate.get("mix", "default")),
                                   user_prefix=str(generate.get("user_prefix", "scenario-user-")))
            events += [factory.event() for _ in range(int(generate.get("count", 10)))]
        accepted = []
        for event in events:
            status, body = self.http.call("ingestion", "POST", "/api/events", event)
            if status != 202:
                who = event.get("userId", event.get("anonymousId"))
                raise StepFailed(f"event for {who!r} was not accepted: {status} {body}")
            accepted.append(body)
        return {"accepted": accepted}, f"{len(accepted)} event(s) accepted"

    def _identify(self, spec: dict[str, Any]) -> tuple[Any, str]:
        """Link `anonymousId` to `userId` (with optional `traits`) on the Ingestion API; it must be accepted."""
        body = {"userId": spec["userId"], "anonymousId": spec["anonymousId"], "traits": spec.get("traits", {})}
        status, answer = self.http.call("ingestion", "POST", "/api/identify", body)
        if status != 202:
            raise StepFailed(f"identify {body['anonymousId']!r} as {body['userId']!r} was not accepted: "
                             f"{status} {answer}")
        return answer, f"{body['anonymousId']} → {body['userId']} accepted"

    def _wait_until(self, spec: dict[str, Any]) -> tuple[Any, str]:
        timeout = parse_duration(str(spec.get("timeout", "10s")))
        interval = parse_duration(str(spec.get("interval", "100ms")))
        deadline = time.monotonic() + timeout
        last: str = "no response yet"
        while True:
            try:
                body, detail = self._request(spec)
                return body, f"{detail} (after {timeout - (deadline - time.monotonic()):.2f} s)"
            except (StepFailed, ExpectationFailed) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise StepFailed(f"condition did not hold within {timeout:g} s; last seen: {last}")
            time.sleep(interval)

    def _load(self, spec: dict[str, Any]) -> tuple[Any, str]:
        plan = LoadPlan(
            url=self.http.url("ingestion", "/api/events/batch" if int(spec.get("batch", 1)) > 1 else "/api/events"),
            schedule=ArrivalSchedule([Stage(float(spec["rate"]), parse_duration(str(spec.get("duration", "5s"))))]),
            events=EventFactory(users=int(spec.get("users", 1000)), mix=parse_mix(str(spec.get("mix", "default")))),
            batch_size=int(spec.get("batch", 1)),
            headers=self.http.auth_headers(),
        )
        thresholds = [parse_threshold(t) for t in spec.get("thresholds", [])]
        summary = asyncio.run(run_load(plan)).as_json(thresholds)
        breached = [t["threshold"] for t in summary["thresholds"] if not t["passed"]]
        if breached:
            raise StepFailed(f"load thresholds breached: {', '.join(breached)} (summary: {summary['latency_ms']})")
        return summary, f"{summary['events_sent']} events at {summary['achieved_rate']:.0f}/s"

    def _sleep(self, spec: dict[str, Any]) -> tuple[Any, str]:
        seconds = parse_duration(str(spec.get("duration", "1s")))
        time.sleep(seconds)
        return None, f"slept {seconds:g} s"


class ScenarioObserver(Protocol):
    """Hears of each scenario as it starts, each step as it ends, and each scenario's result."""

    def started(self, scenario: Scenario) -> None: ...

    def step(self, step: StepResult) -> None: ...

    def finished(self, result: ScenarioResult) -> None: ...


def run_files(settings: AmctlSettings, paths: list[Path], observer: ScenarioObserver) -> list[ScenarioResult]:
    """Run each scenario file in turn against the services `settings` names (`scenario run` and `smoke`)."""
    http = ServiceHttp(settings)
    results = []
    try:
        for path in paths:
            scenario = load_scenario(path)
            observer.started(scenario)
            result = ScenarioRunner(http, on_step=observer.step, variables=http.template_variables()).run(scenario)
            observer.finished(result)
            results.append(result)
    finally:
        http.close()
    return results
