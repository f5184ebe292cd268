"""Session-wide real infrastructure: one PostgreSQL and one broker for the whole run, and Debian's
prometheus package (promtool, prometheus) for the tests that need it.

Each test gets its own database (cloned from a migrated template) and its own topic prefix,
so tests never see each other's data and servers are never restarted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from amctl.local import processes
from amctl.local.broker import EmbeddedBroker
from amctl.local.postgres import EmbeddedPostgres
from server.runtime.secrets import new_key
from server.runtime.settings import ServiceSettings
from server.stores.kafka import create_topics
from server.stores.migrate import migrate

TEMPLATE_DB = "am_template"


def _world_readable_tmpdir(prefix: str) -> Path:
    # PostgreSQL runs as `nobody` when the suite runs as root, so it must be able to enter the dir.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def _wait(ready: object, what: str, pid: int, log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():  # type: ignore[operator]
        if not processes.process_alive(pid) or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n" + "\n".join(processes.tail(log)))
        time.sleep(0.05)


@pytest.fixture(scope="session")
def infra_dir() -> Iterator[Path]:
    path = _world_readable_tmpdir("am-tests-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(infra_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(data_dir=infra_dir / "pgdata", port=processes.free_port(), durable=False)
    server.init()
    log = infra_dir / "postgres.log"
    pid = processes.spawn(server.command(), os.environ, log)
    try:
        _wait(server.ready, "PostgreSQL", pid, log)
        yield server
    finally:
        processes.stop(pid, signal.SIGINT)  # fast shutdown: do not wait for clients


@pytest.fixture(scope="session")
def kafka_broker(infra_dir: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(port=processes.free_port())
    log = infra_dir / "broker.log"
    pid = processes.spawn(broker.command(), os.environ, log)
    try:
        _wait(broker.ready, "broker", pid, log)
        yield broker
    finally:
        processes.stop(pid)


def _db_url(server: EmbeddedPostgres, name: str) -> str:
    return f"postgresql://postgres@{server.host}:{server.port}/{name}"


@pytest.fixture(scope="session")
def template_database(postgres_server: EmbeddedPostgres) -> str:
    with psycopg.connect(postgres_server.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    migrate(_db_url(postgres_server, TEMPLATE_DB))
    return TEMPLATE_DB


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@pytest.fixture
def database_url(postgres_server: EmbeddedPostgres, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for this test only."""
    name = unique_name("db_")
    with psycopg.connect(postgres_server.conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template_database))
        )
    yield _db_url(postgres_server, name)
    with psycopg.connect(postgres_server.conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def topic_prefix(kafka_broker: EmbeddedBroker) -> str:
    """A prefix under which this test's own copies of every platform topic exist."""
    prefix = unique_name("t") + "."
    create_topics(kafka_broker.bootstrap, prefix)
    return prefix


SESSION_SECRETS_KEY = new_key()


@pytest.fixture
def service_settings(database_url: str, kafka_broker: EmbeddedBroker, topic_prefix: str) -> ServiceSettings:
    return ServiceSettings(
        database_url=database_url,
        kafka_bootstrap=kafka_broker.bootstrap,
        topic_prefix=topic_prefix,
        startup_wait_s=10,
        dependency_timeout_s=2,
        kafka_session_timeout_ms=2000,  # joins (and closes during a join) take 1 s instead of 3 s
        secrets_key=SecretStr(SESSION_SECRETS_KEY),  # as amctl sets it: seals secrets, signs unsubscribe links
    )


# -- Debian's prometheus package ------------------------------------------------------------

PROMETHEUS_PACKAGE = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]


def _from_prometheus_package(program: str) -> str:
    """`program` from Debian's `prometheus` package, installed on first use when running as root."""
    found = shutil.which(program)
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        started = time.monotonic()
        print(f"\ninstalling {program}: {' '.join(PROMETHEUS_PACKAGE)}", flush=True)
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        result = subprocess.run(PROMETHEUS_PACKAGE, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:  # the package lists may be missing on a fresh machine
            subprocess.run(["apt-get", "update"], capture_output=True, env=env, check=False)
            subprocess.run(PROMETHEUS_PACKAGE, capture_output=True, text=True, env=env, check=False)
        found = shutil.which(program)
        if found:
            print(f"installed {program} in {time.monotonic() - started:.0f} s", flush=True)
            return found
    pytest.fail(f"{program} is missing: install Debian's prometheus package "
                "(sudo apt-get install -y --no-install-recommends prometheus)", pytrace=False)


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool, to check configs and unit-test the alert rules."""
    return _from_prometheus_package("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    """The Prometheus server `amctl up --with-monitoring` runs."""
    return Path(_from_prometheus_package("prometheus"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak tests run only when the marker expression names them (`-m soak`): a plain `pytest` or `-m e2e`
    must never start a run of minutes to hours."""
    if "soak" in (config.getoption("markexpr") or ""):
        return
    soaks = [item for item in items if item.get_closest_marker("soak") is not None]
    if soaks:
        config.hook.pytest_deselected(items=soaks)
        items[:] = [item for item in items if item.get_closest_marker("soak") is None]
