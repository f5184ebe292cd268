"""Schemathesis against each service's own OpenAPI, on the real PostgreSQL and broker.

Valid and invalid requests for every operation: never a 5xx, never a hang (every request is
cut off after REQUEST_TIMEOUT_S), and answers that match the documented schema and content type.
Then valid bodies with one unstorable value put somewhere in them (a lone surrogate, NaN, ±Infinity,
1e400, an integer beyond 64 bits; as a value or as a key): each must be refused, never accepted.
Derandomized with a bounded number of examples, so a run is repeatable and takes seconds.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
)

from server.communication_api.app import create_app as communication_app
from server.ingestion_api.app import create_app as ingestion_app
from server.runtime.secrets import new_key
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app as segment_app

pytestmark = pytest.mark.api

SERVICES: dict[str, Callable[[ServiceSettings], FastAPI]] = {
    "segment-api": segment_app, "ingestion-api": ingestion_app, "communication-api": communication_app,
}
EXAMPLES_PER_MODE = 25
HOSTILE_EXAMPLES = 20  # per operation with a JSON body
REQUEST_TIMEOUT_S = 5.0


def negative_data_refused(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """`negative_data_rejection`, with 413 a refusal too: the body limit answers before the schema is checked
    (a batch of over 500 generated events is also over 512 KB)."""
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)


CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, negative_data_refused]
SETTINGS = hypothesis.settings(derandomize=True, deadline=None, database=None,
                               phases=[Phase.explicit, Phase.generate, Phase.shrink],
                               suppress_health_check=list(HealthCheck))

OVERFLOW = "<1e400>"  # written as the bare number 1e400, which parses as inf
UNSTORABLE_TEXT = st.sampled_from(["\ud800", "x\udfff", "\udbff\u00e9"])
UNSTORABLE = UNSTORABLE_TEXT | st.sampled_from([float("nan"), float("inf"), -float("inf"), OVERFLOW,
                                                2**64, -(2**63) - 1])


SHORT_WAIT_S = 0.05


def cut_short(case: schemathesis.Case) -> None:
    """A read with `after` waits up to `wait` s (2 by default, 10 at most) for an event that a generated id
    never has: a valid wait becomes a short one, so a run stays seconds long and under REQUEST_TIMEOUT_S."""
    query = case.query if isinstance(case.query, dict) else None
    if query is None or "after" not in query:
        return
    wait = query.get("wait", 0)
    if isinstance(wait, int | float) and not isinstance(wait, bool) and 0 <= wait <= 10:
        query["wait"] = min(wait, SHORT_WAIT_S)


def fuzz(operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
    @hypothesis.settings(SETTINGS, max_examples=EXAMPLES_PER_MODE)
    @hypothesis.given(operation.as_strategy(generation_mode=mode))
    def one(case: schemathesis.Case) -> None:
        cut_short(case)
        response = case.call(timeout=REQUEST_TIMEOUT_S)  # a hang becomes a ReadTimeout, i.e. a failure
        case.validate_response(response, checks=CHECKS)

    one()


def places(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Every place in a JSON value: itself, and everything inside it."""
    inner: list[tuple[str | int, ...]] = []
    if isinstance(value, dict):
        inner = [p for key, item in value.items() for p in places(item, (*path, key))]
    elif isinstance(value, list):
        inner = [p for index, item in enumerate(value) for p in places(item, (*path, index))]
    return [path, *inner]


def planted(body: Any, where: tuple[str | int, ...], hostile: Any, as_key: bool) -> Any:
    """`body` with `hostile` put at `where` (or, when that is an object and `as_key`, added as a key)."""
    if not where:
        if as_key and isinstance(body, dict) and isinstance(hostile, str):
            return {**body, hostile: 1}
        return hostile
    head, *rest = where
    copy = list(body) if isinstance(body, list) else dict(body)
    copy[head] = planted(body[head], tuple(rest), hostile, as_key)  # type: ignore[index]
    return copy


def as_sent(body: Any) -> bytes:
    """JSON a client can send: lone surrogates as \\u escapes, NaN and ±Infinity bare, OVERFLOW as 1e400."""
    return json.dumps(body).replace(f'"{OVERFLOW}"', "1e400").encode()


def refused(body: Any, status: int) -> bool:
    """Whether the service took none of it; a batch may still take the events that were storable."""
    rejected = isinstance(body, dict) and isinstance(body.get("rejected"), int) and body["rejected"] > 0
    return 400 <= status < 500 or (status == 207 and rejected)


def fuzz_unstorable(operation: schemathesis.APIOperation) -> None:
    @hypothesis.settings(SETTINGS, max_examples=HOSTILE_EXAMPLES)
    @hypothesis.given(operation.as_strategy(generation_mode=GenerationMode.POSITIVE), st.data())
    def one(case: schemathesis.Case, data: st.DataObject) -> None:
        spots = places(case.body)
        where = spots[data.draw(st.integers(0, len(spots) - 1), label="where")]
        as_key = data.draw(st.booleans(), label="as a key")
        hostile = data.draw(UNSTORABLE_TEXT if as_key else UNSTORABLE, label="value")
        case.body = as_sent(planted(case.body, where, hostile, as_key))
        response = case.call(timeout=REQUEST_TIMEOUT_S)
        case.validate_response(response, checks=[not_a_server_error, content_type_conformance])
        assert refused(response.json(), response.status_code), \
            f"{hostile!r} at {where} accepted: {response.status_code} {response.text[:300]}"

    one()


Runs = Callable[[schemathesis.APIOperation], list[tuple[str, Callable[[], None]]]]


def fuzz_every_operation(service: str, settings: ServiceSettings, runs: Runs) -> tuple[int, list[str]]:
    """Every (label, run) that `runs` gives for each operation of `service`: how many ran, and every failure."""
    # with a key to seal destination secrets: without one, creating a destination is a 503 by design
    keyed = settings.model_copy(update={"secrets_key": SecretStr(new_key())})
    schema = schemathesis.openapi.from_asgi("/openapi.json", SERVICES[service](keyed))
    failures: list[str] = []
    tried = 0
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            for label, run in runs(operation):
                tried += 1
                try:
                    run()
                except Unsatisfiable:  # nothing of this operation can be made invalid (no parameters)
                    continue
                except Exception as exc:  # collect every operation's failure, not just the first
                    failures.append(f"{operation.label}{label}: {exc}")
    finally:
        shutdown_lifespans()
    return tried, failures


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_generated_requests_get_documented_answers_and_no_5xx(service: str, service_settings: ServiceSettings) -> None:
    tried, failures = fuzz_every_operation(service, service_settings, lambda operation: [
        (f" ({mode.value})", functools.partial(fuzz, operation, mode))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])
    assert tried >= 4, "the schema lists fewer operations than the service has"
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_valid_bodies_with_one_unstorable_value_anywhere_are_refused(service: str,
                                                                    service_settings: ServiceSettings) -> None:
    tried, failures = fuzz_every_operation(service, service_settings, lambda operation: [
        ("", functools.partial(fuzz_unstorable, operation))
    ] if any("json" in body.media_type for body in operation.body) else [])
    assert tried >= 1, "no operation with a JSON body"
    assert not failures, "\n\n".join(failures)
