"""Schema migrations and topic creation: `python -m server.stores.migrate`.

Migrations are the numbered `migrations/*.sql` files, applied once each (all pending ones in one transaction)
and recorded in `schema_migrations`.
"""

from __future__ import annotations

import argparse
import logging
from importlib import resources

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from server.runtime.settings import ServiceSettings
from server.stores.kafka import create_topics

log = logging.getLogger("migrate")


def ensure_database(conninfo: str) -> bool:
    """Create the database named in `conninfo` if missing (connecting to `postgres`); True if created."""
    params = conninfo_to_dict(conninfo)
    name = str(params.get("dbname", "postgres"))
    admin = make_conninfo(conninfo, dbname="postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return True


def pending_migrations(applied: set[str]) -> list[tuple[str, str]]:
    files = sorted(
        (f for f in resources.files("server.stores").joinpath("migrations").iterdir() if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )
    return [(f.name, f.read_text()) for f in files if f.name not in applied]


def migrate(conninfo: str) -> list[str]:
    """Apply every migration not applied yet; returns their names in order."""
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("SELECT pg_advisory_xact_lock(424242)")  # one migrator at a time
        applied = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
        done = []
        for name, text in pending_migrations(applied):
            conn.execute(text.encode())
            conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (name,))
            done.append(name)
        conn.commit()
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description="Create the database, apply migrations, create topics.")
    parser.add_argument("--skip-topics", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = ServiceSettings()
    if ensure_database(settings.database_conninfo):
        log.info("created database")
    applied = migrate(settings.database_conninfo)
    log.info("applied migrations: %s", ", ".join(applied) or "none pending")
    if not args.skip_topics:
        created = create_topics(settings.kafka_bootstrap, settings.topic_prefix)
        log.info("created topics: %s", ", ".join(created) or "all present")


if __name__ == "__main__":
    main()
