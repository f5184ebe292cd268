"""The local Prometheus of `amctl up --with-monitoring`: Debian's binary with the Kubernetes target's
scrape jobs and alert rules (amctl/prometheus.py), each process at its local address.

It runs as a child of amctl like every other component: its config and data live in
`<state_dir>/prometheus`; Debian's systemd unit, /etc/prometheus and /var/lib/prometheus are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import httpx

from amctl.local.errors import StackError
from amctl.prometheus import ScrapeTarget, local_config

INSTALL_COMMAND = "sudo apt-get install -y --no-install-recommends prometheus"
# A local stack is for looking at the last hours, not for keeping history.
RETENTION = ("--storage.tsdb.retention.time=1d", "--storage.tsdb.retention.size=256MB")


class LocalPrometheus:
    """Where the local Prometheus keeps its files, how it is started, and what it reports."""

    def __init__(self, state_dir: Path, host: str, port: int, binary: Path) -> None:
        self.directory = state_dir / "prometheus"
        self.config_path = self.directory / "prometheus.yml"
        self.host, self.port, self.binary = host, port, binary
        self.url = f"http://{host}:{port}"

    def check_installed(self) -> None:
        """Fail before anything starts when the binary is missing, saying how to get it."""
        if not (self.binary.is_file() and os.access(self.binary, os.X_OK)):
            raise StackError(f"Prometheus is not installed ({self.binary} is missing): {INSTALL_COMMAND}",
                             hint="or start without it: amctl up --without-monitoring")

    def command(self) -> list[str]:
        return [
            str(self.binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.directory / 'data'}",
            *RETENTION,
            f"--web.listen-address={self.host}:{self.port}",
            # Debian's defaults point into /etc/prometheus
            f"--web.console.templates={self.directory / 'consoles'}",
            f"--web.console.libraries={self.directory / 'console_libraries'}",
        ]

    def write_config(self, targets: Sequence[ScrapeTarget]) -> None:
        """Write prometheus.yml for these targets (rewritten on every start, so ports may change)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(local_config(f"{self.host}:{self.port}", targets))

    def describe(self) -> str:
        """`6/6 targets up, 3 rules`, naming targets that are down and alerts that fire."""
        try:
            targets = httpx.get(f"{self.url}/api/v1/targets", params={"state": "active"},
                                timeout=2.0).json()["data"]["activeTargets"]
            groups = httpx.get(f"{self.url}/api/v1/rules", timeout=2.0).json()["data"]["groups"]
        except (httpx.HTTPError, ValueError, KeyError):
            return "targets unknown"
        up = sum(1 for t in targets if t["health"] == "up")
        text = f"{up}/{len(targets)} targets up"
        down = [t["labels"].get("component", t["labels"].get("job", "?")) for t in targets if t["health"] == "down"]
        if down:
            text += f" (down: {', '.join(sorted(down))})"
        rules = [rule for group in groups for rule in group["rules"]]
        text += f", {len(rules)} rules"
        firing = sorted(rule["name"] for rule in rules if rule.get("state") == "firing")
        return text + (f"; firing: {', '.join(firing)}" if firing else "")
