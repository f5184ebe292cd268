"""The local Flink session cluster of `amctl up --flink session`: a JobManager and a TaskManager from the pyflink
wheel's own scripts (`pyflink/bin/jobmanager.sh`, `taskmanager.sh`), which the rule job is submitted to by
`python -m flinkjob.submit`, the code the Kubernetes target's `rule-job-submit` Job runs.

Everything lives in `<state_dir>/flink`: `conf/config.yaml` (rewritten on every start, so ports may change),
`lib/` (the wheel's jars and its flink-python jar, which the wheel keeps apart in `opt/`: the cluster's classpath
needs it to run Python operators, as the Flink image does), and the scripts' pid files. Flink's own log files go
to `<state_dir>/logs/flink`; each process's console output is its component log.
"""

from __future__ import annotations

import os
import site
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from amctl.local.postgres import package_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
# The JobManager's heap and the TaskManager's whole process: what the local mini-cluster gives the job's
# TaskManager (flinkjob.job), and a JobManager sized for one job.
JOBMANAGER_MEMORY = "768m"
TASKMANAGER_MEMORY = "1024m"
TASK_SLOTS = 2


def flink_home() -> Path:
    return package_dir("pyflink")


class LocalFlinkCluster:
    """Where the session cluster keeps its files, how its two processes start, and what they report."""

    def __init__(self, state_dir: Path, host: str, rest_port: int, rpc_port: int) -> None:
        self.directory = state_dir / "flink"
        self.conf_dir = self.directory / "conf"
        self.lib_dir = self.directory / "lib"
        self.log_dir = state_dir / "logs" / "flink"
        self.host, self.rest_port, self.rpc_port = host, rest_port, rpc_port
        self._registered_before: frozenset[str] = frozenset()  # TaskManagers known when one was last started

    @property
    def rest(self) -> str:
        """host:port of the REST API (and web UI): what the rule job is submitted to."""
        return f"{self.host}:{self.rest_port}"

    def jobmanager_command(self) -> list[str]:
        return [str(flink_home() / "bin" / "jobmanager.sh"), "start-foreground"]

    def taskmanager_command(self) -> list[str]:
        return [str(flink_home() / "bin" / "taskmanager.sh"), "start-foreground"]

    def environment(self, base: Mapping[str, str]) -> dict[str, str]:
        """The scripts' settings; Python operators run inside the TaskManager's JVM (thread mode), which finds
        this virtualenv's packages and this repository through PYTHONPATH."""
        paths = [*site.getsitepackages(), str(REPO_ROOT)]
        return {**base, "FLINK_CONF_DIR": str(self.conf_dir), "FLINK_LIB_DIR": str(self.lib_dir),
                "FLINK_LOG_DIR": str(self.log_dir), "FLINK_PID_DIR": str(self.directory),
                "PYTHONPATH": os.pathsep.join(paths)}

    def prepare(self) -> None:
        """Write the configuration and link the jars (both again on every start: the wheel may have changed)."""
        home = flink_home()
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for shipped in (home / "conf").glob("log*"):  # log4j and logback settings, as the wheel has them
            (self.conf_dir / shipped.name).write_bytes(shipped.read_bytes())
        (self.conf_dir / "config.yaml").write_text(yaml.safe_dump(self.configuration(home), sort_keys=True))
        self.lib_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.lib_dir.iterdir():
            stale.unlink()
        for jar in [*(home / "lib").glob("*.jar"), *(home / "opt").glob("flink-python*.jar")]:
            (self.lib_dir / jar.name).symlink_to(jar)

    def configuration(self, home: Path) -> dict[str, Any]:
        shipped = yaml.safe_load((home / "conf" / "config.yaml").read_text()) or {}
        java_options = shipped.get("env", {}).get("java", {}).get("opts", {}).get("all", "")
        return {
            "env.java.opts.all": java_options,  # the module openings Java 17 needs, as shipped
            "jobmanager.bind-host": self.host,
            "jobmanager.rpc.address": self.host,
            "jobmanager.rpc.port": self.rpc_port,
            "jobmanager.memory.process.size": JOBMANAGER_MEMORY,
            "jobmanager.execution.failover-strategy": "region",
            "taskmanager.bind-host": self.host,
            "taskmanager.host": self.host,
            "taskmanager.numberOfTaskSlots": TASK_SLOTS,
            "taskmanager.memory.process.size": TASKMANAGER_MEMORY,
            "rest.address": self.host,
            "rest.bind-address": self.host,
            "rest.port": self.rest_port,
            # a TaskManager killed on this machine is noticed in seconds, not after the default 50 s
            "heartbeat.interval": 2000,
            "heartbeat.timeout": 10000,
        }

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            answer: dict[str, Any] = httpx.get(f"http://{self.rest}{path}", timeout=1.0).json()
        except (httpx.HTTPError, ValueError):
            return None
        return answer

    def overview(self) -> dict[str, Any] | None:
        return self._get("/overview")

    def taskmanagers(self) -> frozenset[str]:
        """The ids of the TaskManagers the JobManager lists (one killed stays listed until its heartbeat times
        out)."""
        answer = self._get("/taskmanagers") or {}
        return frozenset(str(tm["id"]) for tm in answer.get("taskmanagers", ()))

    def jobmanager_ready(self) -> bool:
        return self.overview() is not None

    def before_taskmanager_starts(self) -> None:
        self._registered_before = self.taskmanagers()

    def taskmanager_ready(self) -> bool:
        """A TaskManager has registered its slots since the last one was started here (not one that died but is
        still listed)."""
        return bool(self.taskmanagers() - self._registered_before)

    def describe_jobmanager(self) -> str:
        overview = self.overview()
        if overview is None:
            return "REST API not answering"
        return (f"UI http://{self.rest}; {overview['jobs-running']} job(s) running, "
                f"{overview['taskmanagers']} TaskManager(s)")

    def describe_taskmanager(self) -> str:
        overview = self.overview()
        if overview is None:
            return "JobManager not answering"
        return f"{overview['slots-total'] - overview['slots-available']}/{overview['slots-total']} slots in use"
