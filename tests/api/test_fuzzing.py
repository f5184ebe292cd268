"""Schemathesis against each service's own OpenAPI, on the real PostgreSQL and broker.

Valid and invalid requests for every operation: never a 5xx, never a hang (every request is
cut off after REQUEST_TIMEOUT_S), and answers that match the documented schema and content type.
Derandomized with a bounded number of examples, so a run is repeatable and takes seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Unsatisfiable
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
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app as segment_app

pytestmark = pytest.mark.api

SERVICES: dict[str, Callable[[ServiceSettings], FastAPI]] = {
    "segment-api": segment_app, "ingestion-api": ingestion_app, "communication-api": communication_app,
}
EXAMPLES_PER_MODE = 25
REQUEST_TIMEOUT_S = 5.0
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance, negative_data_rejection]


def fuzz(operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
    @hypothesis.settings(max_examples=EXAMPLES_PER_MODE, derandomize=True, deadline=None, database=None,
                         phases=[Phase.explicit, Phase.generate, Phase.shrink],
                         suppress_health_check=list(HealthCheck))
    @hypothesis.given(operation.as_strategy(generation_mode=mode))
    def one(case: schemathesis.Case) -> None:
        response = case.call(timeout=REQUEST_TIMEOUT_S)  # a hang becomes a ReadTimeout, i.e. a failure
        case.validate_response(response, checks=CHECKS)

    one()


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_generated_requests_get_documented_answers_and_no_5xx(service: str, service_settings: ServiceSettings) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", SERVICES[service](service_settings))
    failures: list[str] = []
    tried = 0
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                tried += 1
                try:
                    fuzz(operation, mode)
                except Unsatisfiable:  # nothing of this operation can be made invalid (no parameters)
                    continue
                except Exception as exc:  # collect every operation's failure, not just the first
                    failures.append(f"{operation.label} ({mode.value}): {exc}")
    finally:
        shutdown_lifespans()
    assert tried >= 4, "the schema lists fewer operations than the service has"
    assert not failures, "\n\n".join(failures)
