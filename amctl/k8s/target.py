"""The k8s target's Platform: deploy phase by phase and wait for each, report each workload's readiness,
delete the namespace, and read the deployment's admin API key for the service clients."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass

from pydantic import SecretStr

from amctl.errors import AmctlError
from amctl.k8s import budget as budgets
from amctl.k8s.apply import API_KEYS_ENTRY, apply, ensure_secrets, read_api_key, rerun_finished_jobs
from amctl.k8s.cluster import DEFAULT_CONTEXT, Cluster, session
from amctl.k8s.delete import delete
from amctl.k8s.profile import DEFAULT_PROFILE
from amctl.k8s.render import PHASES, SECRET_NAME, Manifest, describe, load, phase
from amctl.k8s.wait import WaitTimeout, WorkloadFailed, pending, wait_ready, workloads
from amctl.settings import AmctlSettings
from amctl.target import (
    ComponentStatus,
    DownResult,
    Endpoint,
    Kind,
    Pending,
    Progress,
    StatusReport,
    Update,
    UpResult,
)


@dataclass(frozen=True)
class K8sOptions:
    """The k8s target's own options (`--profile`, `--context`, `--kubeconfig`, `--timeout`)."""

    profile: str = DEFAULT_PROFILE
    context: str = DEFAULT_CONTEXT
    kubeconfig: str | None = None
    timeout_s: float = 900.0


class K8sTarget:
    """One profile's deployment in one kube context."""

    def __init__(self, settings: AmctlSettings, options: K8sOptions) -> None:
        self.settings = settings
        self.options = options
        self.profile, self.manifests = load(options.profile)

    def _cluster(self) -> AbstractContextManager[Cluster]:
        return session(self.options.context, self.options.kubeconfig)

    # -- up ------------------------------------------------------------------------------------

    def up(self, progress: Progress) -> UpResult:
        """Check the budget, apply phase by phase and wait for each; the last phase submits the rule job."""
        loaded, manifests = self.profile, self.manifests
        result = budgets.compute(loaded, manifests)
        if not result.ok:
            raise AmctlError(f"refusing to deploy: profile {loaded.name} is over budget", details=result.problems,
                             hint=f"see amctl budget --target k8s --profile {self.options.profile}")
        started = time.monotonic()
        with self._cluster() as cluster:
            apply(cluster, [m for m in manifests if m["kind"] == "Namespace"])
            created = ensure_secrets(cluster, loaded.namespace)
            if created:
                progress(Update("secrets", f"generated {SECRET_NAME}: {', '.join(created)}", Kind.NOTE))
            for step in PHASES:
                docs = [m for m in manifests if phase(m) == step and m["kind"] != "Namespace"]
                rerun_finished_jobs(cluster, docs)
                apply(cluster, docs)
                progress(Update(step, f"applied {len(docs)} objects", Kind.NOTE))
                self._wait_phase(cluster, step, docs, self.options.timeout_s - (time.monotonic() - started), progress)
        namespace = loaded.namespace
        return UpResult(
            f"k8s, {loaded.name}", PHASES, time.monotonic() - started, self.endpoints(), where=f"namespace {namespace}",
            notes=(f"Grafana password: kubectl -n {namespace} get secret {SECRET_NAME} "
                   "-o jsonpath='{.data.grafana-admin-password}' | base64 -d",
                   f"API key for amctl: export AMCTL_API_KEY=$(kubectl -n {namespace} get secret {SECRET_NAME} "
                   f"-o jsonpath='{{.data.{API_KEYS_ENTRY}}}' | base64 -d | sed -n 's/:admin$//p')"),
            next_steps=("Check with: amctl smoke --target k8s    Remove with: amctl down --target k8s",),
        )

    def _wait_phase(self, cluster: Cluster, step: str, docs: list[Manifest], timeout_s: float,
                    progress: Progress) -> None:
        names = [describe(m) for m in workloads(docs)]
        if not names:
            return

        def waiting(still: list[Pending], elapsed: float) -> None:
            progress(Update(step, f"{len(still)} of {len(names)} pending ({elapsed:.0f} s)", pending=tuple(still)))

        try:
            wait_ready(cluster, docs, max(timeout_s, 0.0), waiting, self.settings.k8s_poll_s)
        except (WaitTimeout, WorkloadFailed) as exc:
            progress(Update(step, "still pending", Kind.STUCK, tuple(exc.pending)))
            raise
        progress(Update(step, ", ".join(names), Kind.DONE))

    def endpoints(self) -> tuple[Endpoint, ...]:
        loaded = self.profile
        host, ports = self.settings.host, loaded.node_ports
        # the network policies admit only the stores' in-cluster clients; a port-forward reaches them from here
        forward = f"kubectl -n {loaded.namespace} port-forward"
        kafka = ([Endpoint("Kafka", f"{forward} svc/kafka {ports['kafka']}:9094, then localhost:{ports['kafka']}")]
                 # only a single broker advertises an address outside the cluster
                 if loaded.resources("kafka").replicas == 1 else [])
        return (
            Endpoint("Segment API", f"http://{host}:{ports['segment-api']}/docs"),
            Endpoint("Ingestion API", f"http://{host}:{ports['ingestion-api']}/docs"),
            Endpoint("Communication API", f"http://{host}:{ports['communication-api']}/docs"),
            Endpoint("Rule engine health", f"http://{host}:{ports['rule-engine']}/actuator/health"),
            Endpoint("Flink UI", f"http://{host}:{ports['flink-jobmanager']}"),
            Endpoint("Grafana", f"http://{host}:{ports['grafana']}  (user admin)"),
            Endpoint("Prometheus", f"http://{host}:{ports['prometheus']}"),
            Endpoint("Kafka UI", f"http://{host}:{ports['kafka-ui']}"),
            *kafka,
            Endpoint("PostgreSQL", f"{forward} svc/postgres {ports['postgres']}:5432, "
                                   f"then postgresql://postgres@{host}:{ports['postgres']}/audience"),
            Endpoint("Aerospike", f"{forward} svc/aerospike {ports['aerospike']}:3000, "
                                  f"then {host}:{ports['aerospike']}"),
        )

    # -- down / status / clients -------------------------------------------------------------

    def down(self, progress: Progress, purge: bool = False) -> DownResult:
        """Delete the namespace (and our cluster-wide RBAC objects) and wait until it is gone; the data goes
        with it, so `purge` changes nothing."""
        namespace = self.profile.namespace
        with self._cluster() as cluster:
            deleted = delete(cluster, self.manifests, namespace, self.options.timeout_s,
                             lambda what, state: progress(Update(what, state)), self.settings.k8s_poll_s)
        if not deleted:
            return DownResult((), f"nothing to delete: namespace {namespace} does not exist")
        return DownResult((f"Namespace/{namespace}",), f"deleted namespace {namespace}")

    def status(self) -> StatusReport:
        """Every workload, `running` when ready, else the most telling reason why not."""
        with self._cluster() as cluster:
            waiting = {p.workload: p for p in pending(cluster, self.manifests)}
        rows = []
        for manifest in workloads(self.manifests):
            item = waiting.get(describe(manifest))
            rows.append(ComponentStatus(describe(manifest), "running" if item is None else item.reason,
                                        detail="" if item is None else item.detail))
        title = f"Audience Manager — k8s ({self.options.profile}, context {self.options.context})"
        return StatusReport(title, "workload", tuple(rows), processes=False)

    def client_settings(self) -> AmctlSettings:
        """The settings with AMCTL_API_KEY, else with the admin key of the Secret `up` generated (the APIs
        require a key on the cluster)."""
        if self.settings.api_key is not None:
            return self.settings
        with self._cluster() as cluster:
            key = read_api_key(cluster, self.profile.namespace, "admin")
        if key is None:
            raise AmctlError(f"no admin API key in the Secret {SECRET_NAME} of namespace {self.profile.namespace}",
                             hint="amctl up --target k8s generates one; or set AMCTL_API_KEY")
        return self.settings.model_copy(update={"api_key": SecretStr(key)})
