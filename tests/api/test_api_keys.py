"""API keys across the three services: each scope against each kind of route, open health, no key in logs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvicorn
from click.testing import Result
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from amctl import cli
from amctl.local import processes
from amctl.paths import REPO_ROOT
from server.communication_api.app import create_app as communication_app
from server.email_worker.app import create_app as email_worker_app
from server.ingestion_api.app import create_app as ingestion_app
from server.runtime.errors import ConfigurationError
from server.runtime.settings import Environment, ServiceSettings
from server.segment_api.app import create_app as segment_app

pytestmark = pytest.mark.api

KEYS = {"read": "read-key-6b1d0c2e9f7a", "write": "write-key-0e4f8a7c3b21", "admin": "admin-key-5d9e1f3a7c60"}
SEGMENT = {"name": "keyed", "rules": {"conditions": [{"field": "totalSpent", "operator": "gt", "value": 1}]}}
EVENT = {"userId": "user-1", "eventType": "purchase", "properties": {"amount": 5}}
CAMPAIGN_TEMPLATE = {"subject": "Hi {{ firstName }}", "body": "Thanks"}
UNKNOWN = "not-a-key-but-long-enough"


def keyed(settings: ServiceSettings) -> ServiceSettings:
    inline = ",".join(f"{key}:{scope}" for scope, key in KEYS.items())
    return settings.model_copy(update={"api_keys": SecretStr(inline)})


@pytest.fixture
def settings(service_settings: ServiceSettings) -> ServiceSettings:
    return keyed(service_settings)


@pytest.fixture
def segments(settings: ServiceSettings) -> Iterator[TestClient]:
    with TestClient(segment_app(settings)) as client:
        yield client


def as_key(scope: str | None) -> dict[str, str]:
    return {"X-API-Key": KEYS[scope]} if scope else {}


# (method, path, needed scope); {id} is a live segment
SEGMENT_ROUTES = [
    ("GET", "/api/segments", "read"),
    ("GET", "/api/segments/{id}", "read"),
    ("GET", "/api/segments/{id}/members", "read"),
    ("GET", "/api/segments/{id}/stats", "read"),
    ("GET", "/api/users/u1/segments", "read"),
    ("POST", "/api/segments/preview", "read"),
    ("POST", "/api/segments", "write"),
    ("PUT", "/api/segments/{id}", "write"),
    ("DELETE", "/api/segments/{id}", "admin"),
]
ORDER = ["read", "write", "admin"]


def call(client: TestClient, method: str, path: str, scope: str | None, segment_id: str) -> int:
    bodies = {"POST /api/segments": {**SEGMENT, "name": f"new-{scope}"}, "PUT /api/segments/{id}": {"description": "d"},
              "POST /api/segments/preview": {"rules": SEGMENT["rules"]}}
    body = bodies.get(f"{method} {path}")
    return client.request(method, path.format(id=segment_id), json=body, headers=as_key(scope)).status_code


@pytest.mark.parametrize(("method", "path", "needed"), SEGMENT_ROUTES, ids=[f"{m} {p}" for m, p, _ in SEGMENT_ROUTES])
def test_each_scope_against_each_segment_route(segments: TestClient, method: str, path: str, needed: str) -> None:
    segment_id = segments.post("/api/segments", json=SEGMENT, headers=as_key("admin")).json()["id"]
    for scope in ORDER:
        fresh = segment_id
        if method == "DELETE":  # each allowed delete needs its own segment
            fresh = segments.post("/api/segments", json={**SEGMENT, "name": f"d-{scope}"}, headers=as_key("admin"))\
                .json()["id"]
        status = call(segments, method, path, scope, fresh)
        if ORDER.index(scope) >= ORDER.index(needed):
            assert status < 400, f"{scope} key refused on {method} {path}: {status}"
        else:
            assert status == 403, f"{scope} key on {method} {path}: {status}"
    assert call(segments, method, path, None, segment_id) == 401


def test_401_says_what_is_missing_with_www_authenticate(segments: TestClient) -> None:
    missing = segments.get("/api/segments")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'
    assert missing.json() == {"detail": "missing API key: send one in the X-API-Key header",
                              "error": "Unauthenticated"}
    unknown = segments.get("/api/segments", headers={"X-API-Key": UNKNOWN})
    assert unknown.status_code == 401 and unknown.json()["detail"] == "unknown API key"
    assert UNKNOWN not in unknown.text


def test_403_names_the_scope_needed_and_the_key_has(segments: TestClient) -> None:
    response = segments.post("/api/segments", json=SEGMENT, headers=as_key("read"))
    assert response.status_code == 403
    detail = response.json()["detail"]
    assert detail.startswith("POST /api/segments needs scope 'write'") and detail.endswith("has 'read'")
    assert KEYS["read"] not in response.text
    assert segments.get("/api/segments", headers=as_key("admin")).json()["total"] == 0  # nothing was stored


APPS: dict[str, Callable[[ServiceSettings], FastAPI]] = {
    "segment-api": segment_app, "ingestion-api": ingestion_app, "communication-api": communication_app,
}


@pytest.mark.parametrize("service", sorted(APPS))
def test_health_metrics_and_docs_stay_open(service: str, settings: ServiceSettings) -> None:
    with TestClient(APPS[service](settings)) as client:
        assert client.get("/actuator/health").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        api = client.get("/openapi.json").json()
    assert api["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"


def test_ingestion_needs_write_and_counts_the_rate_per_key(settings: ServiceSettings) -> None:
    limited = settings.model_copy(update={"rate_limit_per_s": 0.01, "rate_limit_burst": 2})
    with TestClient(ingestion_app(limited)) as client:
        assert client.post("/api/events", json=EVENT).status_code == 401
        assert client.post("/api/events", json=EVENT, headers=as_key("read")).status_code == 403
        assert client.post("/api/events/batch", json={"events": [EVENT]}, headers=as_key("read")).status_code == 403
        codes = [client.post("/api/events", json=EVENT, headers=as_key("write")).status_code for _ in range(3)]
        assert codes == [202, 202, 429]
        assert client.post("/api/events", json=EVENT, headers=as_key("admin")).status_code == 202  # its own bucket


def test_campaigns_read_write_and_cancel(settings: ServiceSettings) -> None:
    with TestClient(segment_app(settings)) as seg:
        segment_id = seg.post("/api/segments", json=SEGMENT, headers=as_key("write")).json()["id"]
    body = {"name": "c", "segmentId": segment_id, "template": CAMPAIGN_TEMPLATE, "schedule": "on_enter"}
    with TestClient(communication_app(settings)) as client:
        assert client.post("/api/campaigns", json=body, headers=as_key("read")).status_code == 403
        created = client.post("/api/campaigns", json=body, headers=as_key("write"))
        assert created.status_code == 201
        url = f"/api/campaigns/{created.json()['id']}"
        assert client.get(url, headers=as_key("read")).status_code == 200
        assert client.get(f"{url}/deliveries", headers=as_key("read")).status_code == 200
        assert client.get("/api/campaigns", headers=as_key("read")).json()["total"] == 1
        assert client.get("/api/campaigns").status_code == 401
        assert client.post(f"{url}/cancel", headers=as_key("read")).status_code == 403
        assert client.post(f"{url}/cancel", headers=as_key("write")).json()["status"] == "CANCELLED"


def test_keys_never_reach_the_logs_or_error_bodies(settings: ServiceSettings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    with TestClient(segment_app(settings)) as client:
        for headers in [as_key("read"), as_key("write"), as_key("admin"), {"X-API-Key": UNKNOWN}]:
            for response in (client.get("/api/segments", headers=headers),
                             client.post("/api/segments", json={"name": ""}, headers=headers),
                             client.delete("/api/segments/nope", headers=headers)):
                bodies.append(response.text + str(response.headers))
    with TestClient(ingestion_app(settings)) as client:
        bodies.append(client.post("/api/events", json=EVENT, headers=as_key("write")).text)
    text = caplog.text + "".join(bodies) + repr(settings) + str(settings.model_dump())
    assert caplog.records, "nothing was logged, so the check would be empty"
    for key in [*KEYS.values(), UNKNOWN]:
        assert key not in text


def test_keys_from_a_file_and_bad_entries_refuse_to_start(service_settings: ServiceSettings, tmp_path: Path) -> None:
    file = tmp_path / "keys"
    file.write_text(f"# mounted from a Secret\n{KEYS['read']}:read\n")
    with TestClient(segment_app(service_settings.model_copy(update={"api_keys_file": file}))) as client:
        assert client.get("/api/segments").status_code == 401
        assert client.get("/api/segments", headers=as_key("read")).status_code == 200
        assert client.post("/api/segments", json=SEGMENT, headers=as_key("read")).status_code == 403
    for bad, message in [("short:read", "at least 16 characters"), (f"{KEYS['read']}:owner", "unknown scope 'owner'"),
                         (f"{KEYS['read']}:read,{KEYS['read']}:admin", "listed twice"), ("noscope", "key:scope")]:
        with pytest.raises(ValidationError, match=message) as caught:
            ServiceSettings(api_keys=SecretStr(bad))
        assert KEYS["read"] not in str(caught.value)
    with pytest.raises(ValidationError, match="cannot read"):
        ServiceSettings(api_keys_file=tmp_path / "missing")


@pytest.fixture
def served_segments(settings: ServiceSettings) -> Iterator[int]:
    """The Segment API with keys, served over real HTTP on a free port (amctl talks HTTP)."""
    port = processes.free_port()
    server = uvicorn.Server(uvicorn.Config(segment_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the Segment API did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def amctl(port: int, key: str | None, *args: str) -> Result:
    env = {"AMCTL_PORT_SEGMENT_API": str(port), "AMCTL_API_KEY": key}
    return CliRunner().invoke(cli.app, list(args), env=env)  # type: ignore[arg-type]  # None unsets the variable


def test_amctl_sends_the_key_and_explains_401_and_403(served_segments: int) -> None:
    created = amctl(served_segments, KEYS["write"], "segment", "create", "from-cli", "--rules",
                    '{"conditions":[{"field":"totalSpent","operator":"gt","value":1}]}', "--json")
    assert created.exit_code == 0, created.output
    listed = amctl(served_segments, KEYS["read"], "segment", "list", "--json")
    assert listed.exit_code == 0 and "from-cli" in listed.stdout
    missing = amctl(served_segments, None, "segment", "list")
    assert missing.exit_code == 1
    assert "missing API key" in missing.stderr and "(HTTP 401)" in missing.stderr
    assert "set AMCTL_API_KEY" in missing.stderr and "Traceback" not in missing.output
    refused = amctl(served_segments, KEYS["read"], "segment", "delete", json.loads(created.stdout)["id"])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "needs scope 'admin'" in refused.stderr and "has 'read'" in refused.stderr
    assert "use an API key with the scope named above" in refused.stderr
    assert KEYS["read"] not in refused.output


# -- on Kubernetes the APIs do not run without keys ----------------------------------------------------

MODULES = {"segment-api": "server.segment_api", "ingestion-api": "server.ingestion_api",
           "communication-api": "server.communication_api"}
# one call per API that needs a key: (method, path, body)
GUARDED = {"segment-api": ("GET", "/api/segments", None), "ingestion-api": ("POST", "/api/events", EVENT),
           "communication-api": ("GET", "/api/campaigns", None)}


def keyword_conninfo(url: str) -> str:
    """`host=… dbname=…`, the form the pods use: a password is appended to it."""
    return make_conninfo("", **conninfo_to_dict(url))


def on_k8s(settings: ServiceSettings, **update: object) -> ServiceSettings:
    """The session's stores as a pod's settings: AM_ENVIRONMENT=k8s, a real password, a keyword conninfo."""
    return settings.model_copy(update={"environment": Environment.K8S,
                                       "database_url": keyword_conninfo(settings.database_url),
                                       "database_password": SecretStr("generated-by-amctl-up"), **update})


@pytest.mark.parametrize("service", sorted(APPS))
def test_on_k8s_an_api_without_keys_refuses_to_start(service: str, service_settings: ServiceSettings) -> None:
    with pytest.raises(ConfigurationError) as refused:
        APPS[service](on_k8s(service_settings))
    message = str(refused.value)
    assert message.startswith(f"{service}: no API key configured")
    assert "AM_API_KEYS_FILE" in message and "AM_API_KEYS=" in message and "\n" not in message


def test_the_refusing_process_says_so_in_one_line_and_exits(service_settings: ServiceSettings) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO_ROOT), "AM_ENVIRONMENT": "k8s",
           "AM_DATABASE_URL": keyword_conninfo(service_settings.database_url),
           "AM_DATABASE_PASSWORD": "generated-by-amctl-up", "AM_KAFKA_BOOTSTRAP": service_settings.kafka_bootstrap,
           "AM_PORT": str(processes.free_port())}
    started = subprocess.run([sys.executable, "-m", MODULES["segment-api"]], env=env, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=60, check=False)
    lines = [line for line in (started.stdout + started.stderr).splitlines() if line.strip()]
    assert started.returncode == 2, lines
    assert len(lines) == 1, lines
    assert "CRITICAL" in lines[0] and "refusing to start: segment-api: no API key configured" in lines[0]
    assert "AM_API_KEYS_FILE" in lines[0]


@pytest.mark.parametrize("service", sorted(APPS))
def test_on_k8s_an_api_starts_with_keys_from_the_mounted_file(service: str, service_settings: ServiceSettings,
                                                               tmp_path: Path) -> None:
    file = tmp_path / "api-keys"  # what the Secret's api-keys entry mounts
    file.write_text("".join(f"{key}:{scope}\n" for scope, key in KEYS.items()))
    method, path, body = GUARDED[service]
    with TestClient(APPS[service](on_k8s(service_settings, api_keys_file=file))) as client:
        assert client.get("/actuator/health").status_code == 200  # probes need no key
        assert client.get("/metrics").status_code == 200  # nor does Prometheus
        assert client.request(method, path, json=body).status_code == 401
        assert client.request(method, path, json=body, headers=as_key("admin")).status_code < 400


def test_allow_anonymous_opts_out_on_purpose_and_says_so(service_settings: ServiceSettings,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with TestClient(segment_app(on_k8s(service_settings, allow_anonymous=True))) as client:
        assert client.get("/api/segments").status_code == 200
    assert "runs without API keys because AM_ALLOW_ANONYMOUS is set" in caplog.text
    assert ServiceSettings(allow_anonymous="1").allow_anonymous is True  # the documented AM_ALLOW_ANONYMOUS=1


def test_processes_without_an_api_of_their_own_need_no_keys(service_settings: ServiceSettings) -> None:
    app = email_worker_app(on_k8s(service_settings))  # health and metrics only: no key is mounted for it
    assert app.state.api_keys.enabled is False
