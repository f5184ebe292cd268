"""The local S3 server behind `amctl up --durable-broker`: the broker keeps its records there, on disk.

The server is the npm package `s3rver`, pinned by `s3rver/package-lock.json` and installed on first
use with `npm ci` into a cache shared by every stack of this user (`~/.cache/amctl/s3rver-<hash>`).
`s3rver/serve.js` runs it with the conditional writes the broker's object store relies on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from amctl.local import processes
from amctl.local.errors import StackError

PACKAGE_DIR = Path(__file__).resolve().parent / "s3rver"
BUCKET = "broker"
# s3rver's built-in account; the server only listens on the loopback interface
ACCESS_KEY = "S3RVER"
NODE_HINT = ("install Node.js 18 or newer with npm (e.g. `apt-get install nodejs npm`, or https://nodejs.org), "
             "or run the broker in memory: amctl up --memory-broker")


class S3SetupError(StackError):
    """s3rver could not be installed; `hint` says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "amctl"


def install_dir() -> Path:
    """Where this lock's packages live: a new lock gets a new directory, never a half-updated one."""
    digest = hashlib.sha256((PACKAGE_DIR / "package-lock.json").read_bytes()).hexdigest()[:12]
    return cache_dir() / f"s3rver-{digest}"


def installed() -> bool:
    return (install_dir() / "node_modules" / "s3rver" / "package.json").exists()


def install(timeout_s: float = 600.0) -> Path:
    """`npm ci` the pinned s3rver into the cache unless it is there; returns its node_modules."""
    target = install_dir()
    if installed():
        return target / "node_modules"
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(name for name, path in (("node", node), ("npm", npm)) if path is None)
        raise S3SetupError(f"the durable broker needs {missing} to install its S3 server (s3rver)", hint=NODE_HINT)
    # install beside the target and rename: a stack starting at the same time never sees half of it
    staging = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy2(PACKAGE_DIR / name, staging / name)
        try:
            result = subprocess.run([npm, "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"],
                                    cwd=staging, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise S3SetupError(f"npm ci did not finish within {timeout_s:g} s",
                               hint="check the network access to the npm registry") from None
        if result.returncode != 0:
            raise S3SetupError(f"npm ci failed (exit {result.returncode}) installing s3rver",
                               hint="check the network access to the npm registry (npm config get registry)",
                               log_tail=(result.stdout + result.stderr).splitlines()[-20:])
        try:
            staging.rename(target)
        except OSError:
            if not installed():  # another stack finished first: theirs is as good as ours
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / "node_modules"


@dataclass(frozen=True)
class LocalS3Server:
    """One s3rver process: where its objects live and the port it listens on."""

    root: Path  # objects under root/objects, the storage epoch in root/epoch
    port: int
    host: str = "127.0.0.1"

    @property
    def objects_dir(self) -> Path:
        return self.root / "objects"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def storage_url(self) -> str:
        return f"s3://{BUCKET}/"

    def prepare(self) -> None:
        """Install s3rver if needed and create the data directory."""
        install()
        self.create_data_dir()

    def create_data_dir(self) -> None:
        """The objects' directory and, with a new one, a new epoch."""
        self.objects_dir.mkdir(parents=True, exist_ok=True)
        epoch = self.root / "epoch"
        if not epoch.exists():
            epoch.write_text(uuid.uuid4().hex[:12])

    def epoch(self) -> str:
        """Changes only when the stored records are gone (a new data directory)."""
        try:
            return "s3-" + (self.root / "epoch").read_text().strip()
        except OSError:
            return "s3-new"

    def command(self) -> list[str]:
        return ["node", str(PACKAGE_DIR / "serve.js"), "--directory", str(self.objects_dir),
                "--address", self.host, "--port", str(self.port), "--bucket", BUCKET]

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        return {**base, "NODE_PATH": str(install_dir() / "node_modules")}

    def client_environment(self) -> dict[str, str]:
        """What the broker's object store (Rust `object_store`, from the environment) needs to reach us."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": ACCESS_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def ready(self) -> bool:
        return processes.port_accepts(self.host, self.port)
