"""Every service answers health and metrics against the real PostgreSQL and broker."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from amctl.local import processes
from server.communication_api.app import create_app as communication_app
from server.delivery_worker.app import create_app as delivery_app
from server.email_worker.app import create_app as worker_app
from server.ingestion_api.app import create_app as ingestion_app
from server.runtime.settings import ServiceSettings
from server.segment_api.app import create_app as segment_app

pytestmark = pytest.mark.api

APPS: dict[str, tuple[Callable[[ServiceSettings], FastAPI], set[str]]] = {
    "segment-api": (segment_app, {"db", "kafka", "outbox"}),
    "ingestion-api": (ingestion_app, {"db", "kafka"}),
    "communication-api": (communication_app, {"db", "kafka", "fanOut", "onEnterTrigger"}),
    "email-worker": (worker_app, {"db", "kafka", "worker"}),
    "delivery-worker": (delivery_app, {"db", "kafka", "worker"}),
}


@pytest.mark.parametrize("service", sorted(APPS))
def test_health_is_up_with_every_dependency(service: str, service_settings: ServiceSettings) -> None:
    create_app, dependencies = APPS[service]
    with TestClient(create_app(service_settings)) as client:
        response = client.get("/actuator/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "UP"
    assert set(body["components"]) == dependencies
    assert all(c["status"] == "UP" for c in body["components"].values())


@pytest.mark.parametrize("service", sorted(APPS))
def test_metrics_count_requests_by_route_and_status(service: str, service_settings: ServiceSettings) -> None:
    create_app, _ = APPS[service]
    with TestClient(create_app(service_settings)) as client:
        client.get("/actuator/health")
        client.get("/no-such-route")
        text = client.get("/metrics").text
    labels = f'method="GET",route="/actuator/health",service="{service}",status="200"'
    assert f"am_http_requests_total{{{labels}}} 1.0" in text
    assert 'route="unmatched"' in text and 'status="404"' in text
    assert "am_http_request_duration_seconds_bucket" in text


def test_health_reports_broker_down_with_503(service_settings: ServiceSettings) -> None:
    dead_broker = service_settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{processes.free_port()}",
                                                      "dependency_timeout_s": 0.5})
    with TestClient(ingestion_app(dead_broker)) as client:
        response = client.get("/actuator/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "DOWN"
    assert body["components"]["kafka"]["status"] == "DOWN"


def test_health_reports_database_down_then_up(service_settings: ServiceSettings, postgres_server: object) -> None:
    name = conninfo_to_dict(service_settings.database_url)["dbname"]
    admin = service_settings.database_url.rsplit("/", 1)[0] + "/postgres"
    with TestClient(segment_app(service_settings)) as client:
        assert client.get("/actuator/health").status_code == 200
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        down = client.get("/actuator/health")
        assert down.status_code == 503
        assert down.json()["components"]["db"]["status"] == "DOWN"
        assert down.json()["components"]["kafka"]["status"] == "UP"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
        assert client.get("/actuator/health").status_code == 200


def test_openapi_names_the_service(service_settings: ServiceSettings) -> None:
    with TestClient(segment_app(service_settings)) as client:
        spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "Audience Manager — Segment API"
    assert "/actuator/health" in spec["paths"]
