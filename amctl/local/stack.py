"""The local target: every component as a local process, started in order, each once healthy.

Pids, ports and start times live in `<state_dir>/run/<component>.json`, logs in
`<state_dir>/logs/<component>.log`, PostgreSQL data in `<state_dir>/pgdata`, the broker's records in its
S3 server (`s3`: in memory, or with `amctl up --durable-broker` in `<state_dir>/broker-s3`), the key that
seals destination secrets (AM_SECRETS_KEY) in `<state_dir>/secrets/secrets.key`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from amctl.local import processes
from amctl.local.broker import BrokerSize, EmbeddedBroker, held_records
from amctl.local.errors import StackError as StackError
from amctl.local.flink import LocalFlinkCluster
from amctl.local.mail_sink import read_mails, store_path
from amctl.local.monitoring import LocalPrometheus
from amctl.local.options import StackOptions
from amctl.local.postgres import EmbeddedPostgres
from amctl.local.s3 import LocalS3Server, platform_retention
from amctl.local.webhook_sink import count_received
from amctl.local.webhook_sink import store_path as webhook_store_path
from amctl.prometheus import ScrapeTarget
from amctl.settings import AmctlSettings
from amctl.target import ComponentStatus, DownResult, Endpoint, Kind, Progress, StatusReport, Update, UpResult
from server.runtime.secrets import new_key

DATABASE_NAME = "audience"


@dataclass(frozen=True)
class Component:
    """One process of the stack and how to tell it is ready."""

    name: str
    command: list[str]
    ready: Callable[[], bool]
    port: int | None = None
    port_setting: str = ""
    env: dict[str, str] = field(default_factory=dict)
    oneshot: bool = False
    stop_signal: int = signal.SIGTERM
    prepare: Callable[[], None] | None = None
    preparing: str = "preparing"  # what `prepare` is doing, for the progress line
    slow_prepare: bool = False  # `prepare` takes a while (an install, once per machine): say so on a line of its own
    describe: Callable[[], str] | None = None  # a short line for `amctl status`
    metrics_path: str | None = None  # served on `port` for Prometheus (the pod annotation on k8s)
    preflight: Callable[[], None] | None = None  # raises StackError before anything starts if it cannot run
    restarts_with: tuple[str, ...] = ()  # restarted when one of these is started: it holds state kept there


def secrets_key_path(state_dir: Path) -> Path:
    return state_dir / "secrets" / "secrets.key"


def ensure_secrets_key(state_dir: Path) -> None:
    """Generate the stack's AM_SECRETS_KEY once: destination secrets sealed with it open only with it, so it
    lives as long as the database does (`amctl down --purge` removes both). Readable by its owner alone."""
    path = secrets_key_path(state_dir)
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(new_key())


def read_secrets_key(state_dir: Path) -> str | None:
    try:
        return secrets_key_path(state_dir).read_text().strip() or None
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class RunRecord:
    pid: int
    port: int | None
    created_at: float
    started_at: float


def _job_summary(url: str) -> Callable[[], str]:
    """The rule job's state and newest checkpoint, from the rule engine's health report."""

    def describe() -> str:
        try:
            job = httpx.get(url, timeout=2.0).json()["components"]["flinkJob"]["details"]
        except (httpx.HTTPError, ValueError, KeyError):
            return "job state unknown"
        text = f"job {job.get('state', '?')}"
        if job.get("lastCheckpointId") is not None:
            age = time.time() - job["lastCheckpointAt"] / 1000
            text += f", checkpoint {job['lastCheckpointId']} ({age:.0f} s ago)"
        return text + (f"; failure: {job['lastFailure']}" if job.get("lastFailure") else "")

    return describe


def _http_ready(url: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


class LocalStack:
    """Starts, inspects and stops the local stack described by `settings` (the local target's Platform).

    `extra_env` is added to the environment of every service and of the rule engine (a benchmark's
    rate-limit override, say), so that nothing needs to change in amctl's own environment.
    """

    def __init__(self, settings: AmctlSettings, durable: bool = True, options: StackOptions | None = None,
                 extra_env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.extra_env = dict(extra_env or {})
        self.state_dir = settings.state_dir
        self.options = options if options is not None else StackOptions.load(self.state_dir)
        self.run_dir = self.state_dir / "run"
        self.log_dir = self.state_dir / "logs"
        ports = settings.ports
        self.postgres = EmbeddedPostgres.for_state_dir(self.state_dir, ports.postgres, settings.host, durable)
        self.prometheus = LocalPrometheus(self.state_dir, settings.host, ports.prometheus, settings.prometheus_binary)
        self.broker_data_dir = self.state_dir / "broker-s3"  # the durable broker's records
        self.s3 = LocalS3Server(self.broker_data_dir, ports.s3, settings.host, self.options.durable_broker,
                                platform_retention(settings.broker_keep_s))
        self.flink = LocalFlinkCluster(self.state_dir, settings.host, ports.flink_ui, ports.flink_rpc)
        self.broker = EmbeddedBroker(ports.kafka, settings.host, self.s3.storage_url, self.s3.client_environment(),
                                     durable=self.options.durable_broker)

    # -- what runs -------------------------------------------------------------------------

    def service_env(self, port: int | None = None) -> dict[str, str]:
        s = self.settings
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "AM_ENVIRONMENT": "local",
            "AM_HOST": s.host,
            "AM_DATABASE_URL": f"postgresql://postgres@{s.host}:{s.ports.postgres}/{DATABASE_NAME}",
            "AM_KAFKA_BOOTSTRAP": self.broker.bootstrap,
            "AM_TOPIC_PREFIX": s.topic_prefix,
            "AM_SMTP_HOST": s.host,
            "AM_SMTP_PORT": str(s.ports.smtp),
            # the broker's S3 engine can lose an idempotent producer's batch it was stopped while storing, and
            # then acknowledge the retry as a duplicate: without idempotence a retry is stored again
            "AM_KAFKA_IDEMPOTENCE": "false",
        }
        key = read_secrets_key(self.state_dir)  # generated by `up` before anything starts
        if key is not None:
            env["AM_SECRETS_KEY"] = key
        if port is not None:
            env["AM_PORT"] = str(port)
        return {**env, **self.extra_env}

    def components(self) -> list[Component]:
        s, ports, py = self.settings, self.settings.ports, sys.executable

        def service(name: str, module: str, port: int, setting: str) -> Component:
            return Component(
                name=name,
                command=[py, "-m", module],
                ready=_http_ready(f"{s.url(port)}/actuator/health"),
                port=port,
                port_setting=setting,
                env=self.service_env(port),
                metrics_path="/metrics",
            )

        components = [
            Component(
                name="postgres",
                command=self.postgres.command(),
                ready=self.postgres.ready,
                port=ports.postgres,
                port_setting="AMCTL_PORT_POSTGRES",
                stop_signal=signal.SIGINT,  # fast shutdown
                prepare=self.postgres.init,
            ),
            self._s3_component(),
            Component(
                name="kafka",
                command=self.broker.command(),
                ready=self.broker.ready,
                port=ports.kafka,
                port_setting="AMCTL_PORT_KAFKA",
                env=self.broker.environment(os.environ),
                restarts_with=("s3",),  # the broker caches its watermarks: a new store must meet a new broker
                describe=self._describe_broker,
            ),
            Component(
                name="migrations",
                command=[py, "-m", "server.stores.migrate"],
                ready=lambda: True,
                env=self.service_env(),
                oneshot=True,
            ),
            service("segment-api", "server.segment_api", ports.segment_api, "AMCTL_PORT_SEGMENT_API"),
            service("ingestion-api", "server.ingestion_api", ports.ingestion_api, "AMCTL_PORT_INGESTION_API"),
            service(
                "communication-api", "server.communication_api", ports.communication_api,
                "AMCTL_PORT_COMMUNICATION_API",
            ),
            Component(
                name="mail-sink",
                command=[py, "-m", "amctl.local.mail_sink", "--host", s.host, "--port", str(ports.smtp),
                         "--store", str(store_path(self.state_dir))],
                ready=lambda: processes.port_accepts(s.host, ports.smtp),
                port=ports.smtp,
                port_setting="AMCTL_PORT_SMTP",
                describe=lambda: f"{len(read_mails(store_path(self.state_dir)))} mails kept",
            ),
            service("email-worker", "server.email_worker", ports.email_worker, "AMCTL_PORT_EMAIL_WORKER"),
            Component(
                name="webhook-sink",
                command=[py, "-m", "amctl.local.webhook_sink", "--host", s.host, "--port", str(ports.webhook_sink),
                         "--store", str(webhook_store_path(self.state_dir))],
                ready=_http_ready(f"{s.url(ports.webhook_sink)}/healthz"),
                port=ports.webhook_sink,
                port_setting="AMCTL_PORT_WEBHOOK_SINK",
                describe=lambda: f"{count_received(webhook_store_path(self.state_dir))} requests kept",
            ),
            service("delivery-worker", "server.delivery_worker", ports.delivery_worker,
                    "AMCTL_PORT_DELIVERY_WORKER"),
            *(self._session_cluster() if self.options.flink == "session" else []),
            Component(
                name="rule-engine",
                command=[py, "-m", "flinkjob"],
                ready=_http_ready(f"{s.url(ports.rule_engine)}/actuator/health"),  # UP once the job RUNS
                describe=_job_summary(f"{s.url(ports.rule_engine)}/actuator/health"),
                port=ports.rule_engine,
                port_setting="AMCTL_PORT_RULE_ENGINE",
                metrics_path="/metrics",
                env=self.rule_engine_env(),
            ),
        ]
        return components + ([self._prometheus(components)] if self.options.monitoring else [])

    def rule_engine_env(self) -> dict[str, str]:
        """The rule engine's and the job submitter's settings: on a session cluster the job is submitted to the
        JobManager (and restored from the newest checkpoint under the same state dir)."""
        ports = self.settings.ports
        env = {**self.service_env(ports.rule_engine), "AM_FLINK_UI_PORT": str(ports.flink_ui),
               "AM_STATE_DIR": str(self.state_dir / "rule-engine"), "AM_BROKER_EPOCH": self.broker_epoch(),
               # the job commits its offsets on each checkpoint, and the broker drops what it committed past:
               # more often keeps fewer batches for every fetch to list (an incremental checkpoint is cheap)
               "AM_CHECKPOINT_INTERVAL_MS": "2000"}
        if self.options.flink == "session":
            env["AM_FLINK_JOBMANAGER"] = self.flink.rest
        return env

    def _session_cluster(self) -> list[Component]:
        """The JobManager, a TaskManager, and the rule job submitted to them by the code k8s's `rule-job-submit`
        Job runs (it leaves a job that is running or restarting alone, so every `up` runs it)."""
        ports, flink = self.settings.ports, self.flink
        return [
            Component(
                name="jobmanager",
                command=flink.jobmanager_command(),
                ready=flink.jobmanager_ready,
                port=ports.flink_ui,
                port_setting="AMCTL_PORT_FLINK_UI",
                env=flink.environment(os.environ),
                prepare=flink.prepare,
                describe=flink.describe_jobmanager,
            ),
            Component(
                name="taskmanager",
                command=flink.taskmanager_command(),
                ready=flink.taskmanager_ready,
                env=flink.environment(os.environ),
                prepare=flink.before_taskmanager_starts,
                describe=flink.describe_taskmanager,
            ),
            Component(
                name="rule-job-submit",
                command=[sys.executable, "-m", "flinkjob.submit"],
                ready=lambda: True,
                env=self.rule_engine_env(),
                oneshot=True,
            ),
        ]

    def _prometheus(self, scraped: list[Component]) -> Component:
        """Prometheus scraping every component that serves metrics, started last and stopped first."""
        targets = [ScrapeTarget(c.name, f"{self.settings.host}:{c.port}", c.metrics_path)
                   for c in scraped if c.metrics_path and c.port]
        return Component(
            name="prometheus",
            command=self.prometheus.command(),
            ready=_http_ready(f"{self.prometheus.url}/-/ready"),
            port=self.settings.ports.prometheus,
            port_setting="AMCTL_PORT_PROMETHEUS",
            prepare=lambda: self.prometheus.write_config(targets),
            describe=self.prometheus.describe,
            preflight=self.prometheus.check_installed,
        )

    def _s3_component(self) -> Component:
        return Component(
            name="s3",
            command=self.s3.command(),
            ready=self.s3.ready,
            port=self.s3.port,
            port_setting="AMCTL_PORT_S3",
            prepare=self.s3.prepare,
            describe=lambda: f"files in {self.s3.objects_dir}" if self.s3.durable else "in memory",
        )

    def broker_epoch(self) -> str:
        """Kafka offsets are only valid within one epoch. The in-memory S3 server loses every record when it
        restarts, so each of its starts is a new epoch (the broker itself can restart and keep them); the
        durable one's records live as long as its data directory."""
        if self.broker.durable:
            return self.s3.epoch()
        record = self._read_record("s3")
        return str(int(record.created_at)) if record else "0"

    def component(self, name: str) -> Component:
        for comp in self.components():
            if comp.name == name:
                return comp
        known = ", ".join(c.name for c in self.components())
        raise StackError(f"unknown component '{name}'", hint=f"components: {known}")

    # -- run records -----------------------------------------------------------------------

    def _record_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def _read_record(self, name: str) -> RunRecord | None:
        try:
            return RunRecord(**json.loads(self._record_path(name).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _live_record(self, name: str) -> RunRecord | None:
        """The record of a component whose process still runs; stale records are removed."""
        record = self._read_record(name)
        if record is None:
            return None
        if processes.process_alive(record.pid, record.created_at):
            return record
        self._record_path(name).unlink(missing_ok=True)
        return None

    # -- up / down / status ----------------------------------------------------------------

    def up(self, progress: Progress) -> UpResult:
        """Start every component not running yet, in order, each once healthy."""
        started_at = time.perf_counter()
        for comp in self.components():
            if comp.preflight is not None:
                comp.preflight()  # before anything starts and before the choice is remembered
        self.run_dir.mkdir(parents=True, exist_ok=True)
        ensure_secrets_key(self.state_dir)
        self._refuse_switch_while_running()
        self.options.save(self.state_dir)
        self._stop_dropped(progress)
        started: list[Component] = []
        try:
            for name in [c.name for c in self.components()]:
                comp = self.component(name)  # built now: its settings may depend on what started before it
                if not comp.oneshot and self._live_record(comp.name):
                    restarted_under = [c.name for c in started if c.name in comp.restarts_with]
                    if not restarted_under:
                        progress(Update(comp.name, "already running", Kind.DONE))
                        continue
                    progress(Update(comp.name, f"restarting ({', '.join(restarted_under)} started again)"))
                    self._stop(comp)
                self._start(comp, progress)
                if not comp.oneshot:
                    started.append(comp)
        except BaseException:
            for comp in reversed(started):
                progress(Update(comp.name, "stopping (start-up failed)"))
                self._stop(comp)
            raise
        health = f"{self.settings.url(self.settings.ports.segment_api)}/actuator/health"
        return UpResult("local", tuple(c.name for c in started), time.perf_counter() - started_at, self.endpoints(),
                        next_steps=("Try:", f"  curl -s {health}", "Stop with: amctl down"))

    def endpoints(self) -> tuple[Endpoint, ...]:
        s = self.settings
        kafka = f"{s.host}:{s.ports.kafka}" + (f" (durable: records in {self.s3.objects_dir})" if self.broker.durable
                                               else "")
        return (
            Endpoint("Segment API", f"{s.url(s.ports.segment_api)}/docs"),
            Endpoint("Ingestion API", f"{s.url(s.ports.ingestion_api)}/docs"),
            Endpoint("Communication API", f"{s.url(s.ports.communication_api)}/docs"),
            Endpoint("Webhook receiver", f"{s.url(s.ports.webhook_sink)}/hooks/<name>"),
            Endpoint("PostgreSQL", f"postgresql://postgres@{s.host}:{s.ports.postgres}/{DATABASE_NAME}"),
            Endpoint("Kafka", kafka),
            *([Endpoint("Prometheus", f"{s.url(s.ports.prometheus)}/targets")] if self.options.monitoring else []),
        )

    def client_settings(self) -> AmctlSettings:
        return self.settings

    def _refuse_switch_while_running(self) -> None:
        stored = StackOptions.load(self.state_dir)
        if stored.durable_broker != self.options.durable_broker and any(
                self._live_record(name) for name in ("kafka", "s3")):
            current, wanted = ("durable", "in-memory") if stored.durable_broker else ("in-memory", "durable")
            flag = "--durable-broker" if self.options.durable_broker else "--memory-broker"
            raise StackError(f"the broker is running with {current} storage and cannot switch to {wanted} "
                             "storage while it runs", hint=f"stop the stack first: amctl down, then amctl up {flag}")
        if stored.flink != self.options.flink and any(
                self._live_record(name) for name in ("rule-engine", "jobmanager", "taskmanager")):
            raise StackError(f"the rule job runs on a Flink {stored.flink} cluster and cannot move to a "
                             f"{self.options.flink} cluster while it runs (both would apply every event)",
                             hint=f"stop the stack first: amctl down, then amctl up --flink {self.options.flink}")

    def _start(self, comp: Component, progress: Progress) -> None:
        if comp.port is not None and not processes.port_is_free(self.settings.host, comp.port):
            raise StackError(
                f"port {comp.port} for {comp.name} is already in use by another process",
                hint=f"stop that process, or choose another port: {comp.port_setting}=<port> amctl up",
            )
        if comp.prepare is not None:
            progress(Update(comp.name, comp.preparing, Kind.NOTE if comp.slow_prepare else Kind.WORKING))
            comp.prepare()
        progress(Update(comp.name, "starting"))
        log = self.log_path(comp.name)
        if comp.oneshot:
            self._run_oneshot(comp, log)
            progress(Update(comp.name, "done", Kind.DONE))
            return
        pid = processes.spawn(comp.command, comp.env or os.environ, log)
        now = time.time()
        record = RunRecord(pid=pid, port=comp.port, created_at=processes.create_time(pid) or now, started_at=now)
        self._record_path(comp.name).write_text(json.dumps(asdict(record)))
        deadline = time.monotonic() + self.settings.startup_timeout_s
        progress(Update(comp.name, "waiting until healthy"))
        while not comp.ready():
            processes.reap(pid)
            if not processes.process_alive(pid):
                raise StackError(f"{comp.name} exited during start-up", hint=f"log: {log}",
                                 log_tail=processes.tail(log))
            if time.monotonic() > deadline:
                raise StackError(
                    f"{comp.name} was not healthy within {self.settings.startup_timeout_s:g} s",
                    hint=f"log: {log} (raise AMCTL_STARTUP_TIMEOUT_S if the machine is slow)",
                    log_tail=processes.tail(log),
                )
            time.sleep(0.05)
        progress(Update(comp.name, f"healthy (pid {pid})", Kind.DONE))

    def _run_oneshot(self, comp: Component, log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            try:
                result = subprocess.run(comp.command, env=comp.env, stdout=out, stderr=subprocess.STDOUT,
                                        timeout=self.settings.startup_timeout_s, check=False)
            except subprocess.TimeoutExpired:
                raise StackError(f"{comp.name} did not finish in time", hint=f"log: {log}",
                                 log_tail=processes.tail(log)) from None
        if result.returncode != 0:
            raise StackError(f"{comp.name} failed (exit {result.returncode})", hint=f"log: {log}",
                             log_tail=processes.tail(log))

    def _stop(self, comp: Component) -> bool:
        record = self._live_record(comp.name)
        if record is None:
            return False
        processes.stop(record.pid, comp.stop_signal)
        self._record_path(comp.name).unlink(missing_ok=True)
        return True

    def _stop_dropped(self, progress: Progress) -> list[str]:
        """Stop components that still run but are no longer chosen (`amctl up --without-monitoring`)."""
        chosen = {c.name for c in self.components()}
        stopped = []
        for path in sorted(self.run_dir.glob("*.json")):
            record = None if path.stem in chosen else self._live_record(path.stem)
            if record is not None:
                processes.stop(record.pid)
                path.unlink(missing_ok=True)
                progress(Update(path.stem, "stopped (no longer chosen)", Kind.STOPPED))
                stopped.append(path.stem)
        return stopped

    def down(self, progress: Progress, purge: bool = False) -> DownResult:
        """Stop every component in reverse order (data survives unless `purge`)."""
        stopped = self._stop_dropped(progress)
        for comp in reversed(self.components()):
            if comp.oneshot:
                continue
            if self._stop(comp):
                progress(Update(comp.name, "stopped", Kind.STOPPED))
                stopped.append(comp.name)
        busy = [c for c in self.components() if c.port and processes.port_accepts(self.settings.host, c.port)]
        for comp in busy:
            progress(Update(comp.name, f"port {comp.port} still answers (another process?)", Kind.NOTE))
        if purge:
            self.postgres.purge()
            shutil.rmtree(self.state_dir, ignore_errors=True)
            progress(Update("state", f"removed {self.state_dir}", Kind.NOTE))
        return DownResult(tuple(stopped), f"stopped {len(stopped)} component(s)" if stopped else "nothing was running")

    def broker_size(self, timeout_s: float = 1.0) -> BrokerSize | None:
        """The running broker's and S3 server's RSS, the records produced and what the S3 server holds (each
        asked within `timeout_s`); None when the broker does not run."""
        record = self._live_record("kafka")
        if record is None:
            return None
        store = self._live_record("s3")
        return BrokerSize(self.broker.durable, processes.rss_bytes(record.pid),
                          processes.rss_bytes(store.pid) if store else 0,
                          held_records(self.broker.bootstrap, timeout_s), self.s3.figures(timeout_s))

    def _describe_broker(self) -> str:
        size = self.broker_size()
        if size is not None:
            return size.summary()
        return f"records in S3 on port {self.s3.port}" + (", on disk" if self.broker.durable else ", in memory")

    def memory(self, proportional: bool = False) -> dict[str, int]:
        """RSS of each running component (PSS when `proportional`), from its run record alone (no health
        checks)."""
        measure = processes.pss_bytes if proportional else processes.rss_bytes
        running = ((c.name, self._live_record(c.name)) for c in self.components() if not c.oneshot)
        return {name: measure(record.pid) for name, record in running if record is not None}

    def status(self) -> StatusReport:
        """Each component's state, pid, port, memory and uptime (and a line of its own, such as the job's)."""
        result = []
        for comp in self.components():
            if comp.oneshot:
                continue
            record = self._live_record(comp.name)
            if record is None:
                result.append(ComponentStatus(comp.name, "stopped", None, comp.port, 0, None))
                continue
            state = "running" if comp.ready() else "unhealthy"
            detail = comp.describe() if comp.describe else ""
            result.append(ComponentStatus(comp.name, state, record.pid, comp.port,
                                          processes.rss_bytes(record.pid), time.time() - record.started_at, detail))
        return StatusReport("Audience Manager — local", "component", tuple(result), processes=True)
