"""Service settings: the database connection string psycopg is handed, with and without a password; the
producers' linger."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict
from pydantic import SecretStr

from server.runtime.settings import ServiceSettings
from server.stores.kafka import AsyncProducer

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("url", ["postgresql://postgres@db.audience:5432/audience",
                                 "host=db.audience port=5432 user=postgres dbname=audience"])
def test_a_password_is_added_to_a_url_or_a_key_value_dsn_as_libpq_reads_it(url: str) -> None:
    settings = ServiceSettings(database_url=url, database_password=SecretStr("it's a s3cret"))
    assert conninfo_to_dict(settings.database_conninfo) == {
        "host": "db.audience", "port": "5432", "user": "postgres", "dbname": "audience", "password": "it's a s3cret"}


def test_without_a_password_the_url_is_used_as_given() -> None:
    settings = ServiceSettings(database_url="postgresql://postgres@127.0.0.1:30432/audience")
    assert settings.database_conninfo == "postgresql://postgres@127.0.0.1:30432/audience"


def test_a_services_producer_lingers_as_its_settings_say(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AsyncProducer.for_service(ServiceSettings())._config["linger.ms"] == 5.0
    monkeypatch.setenv("AM_KAFKA_LINGER_MS", "1")
    assert AsyncProducer.for_service(ServiceSettings())._config["linger.ms"] == 1.0
