"""The Kubernetes target: `amctl render`, `budget`, `images build`, and `up`/`down`/`status`/`smoke` with --target k8s.

Commands parse options and print; rendering, budgeting, applying and waiting live in `amctl.k8s`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from kubernetes.client.exceptions import ApiException
from pydantic import SecretStr
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from urllib3.exceptions import HTTPError

from amctl.context import AppContext, get_context
from amctl.k8s import budget as budgets
from amctl.k8s import images
from amctl.k8s.apply import API_KEYS_ENTRY, apply, ensure_secrets, read_api_key, rerun_finished_jobs
from amctl.k8s.cluster import DEFAULT_CONTEXT, Cluster, ClusterError, connect
from amctl.k8s.delete import DeleteTimeout, delete
from amctl.k8s.profile import DEFAULT_PROFILE, Profile, ProfileError, load_profile
from amctl.k8s.render import PHASES, SECRET_NAME, Manifest, describe, phase, render, to_yaml, write
from amctl.k8s.wait import Pending, WaitTimeout, WorkloadFailed, pending, wait_ready, workloads
from amctl.options import JsonOption, TargetOption
from amctl.settings import Target

ProfileOption = Annotated[str, typer.Option(
    "--profile", "-p", envvar="AMCTL_K8S_PROFILE",
    help="A profile in templates/k8s/profiles (or a profile YAML file) (env: AMCTL_K8S_PROFILE).")]
ContextOption = Annotated[str, typer.Option(
    "--context", envvar="AMCTL_K8S_CONTEXT", help="The kube context to deploy to (env: AMCTL_K8S_CONTEXT).")]
KubeconfigOption = Annotated[str | None, typer.Option(
    "--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file(s) (env: KUBECONFIG; default ~/.kube/config).")]
TimeoutOption = Annotated[float, typer.Option(
    "--timeout", envvar="AMCTL_K8S_TIMEOUT", help="Seconds to wait for readiness (env: AMCTL_K8S_TIMEOUT).")]


@dataclass(frozen=True)
class K8sOptions:
    profile: str = DEFAULT_PROFILE
    context: str = DEFAULT_CONTEXT
    kubeconfig: str | None = None
    timeout_s: float = 900.0


def _require_k8s(app: AppContext, target: Target | None) -> None:
    if target is not None and target is not Target.K8S:
        app.fail(f"this command is for the k8s target, not {target}", hint="use --target k8s")


def load(app: AppContext, name: str) -> tuple[Profile, list[Manifest]]:
    try:
        profile = load_profile(name)
    except ProfileError as exc:
        app.fail(str(exc))
    return profile, render(profile)


def _api_message(exc: ApiException) -> str:
    """The API server's own explanation (the Status object's message), first line only."""
    try:
        message = str(json.loads(exc.body or "{}").get("message", ""))
    except (ValueError, AttributeError):
        message = str(exc.body or "")
    return message.strip().splitlines()[0] if message.strip() else "no details"


@contextmanager
def cluster_session(app: AppContext, options: K8sOptions) -> Iterator[Cluster]:
    """A connected cluster; connection and API failures end the command with one line."""
    try:
        cluster = connect(options.context, options.kubeconfig)
    except ClusterError as exc:
        app.fail(str(exc), hint=exc.hint)
    try:
        yield cluster
    except ApiException as exc:
        app.fail(f"the Kubernetes API refused a request: {exc.status} {exc.reason}: {_api_message(exc)}",
                 hint="check your permissions on the cluster (kubectl auth can-i '*' '*')")
    except HTTPError as exc:
        app.fail(f"cannot reach the Kubernetes API of context '{options.context}': {type(exc).__name__}",
                 hint="is Rancher Desktop running with Kubernetes enabled?")
    finally:
        cluster.close()


# -- render / budget / images --------------------------------------------------------------


def render_command(
    ctx: typer.Context,
    target: TargetOption = None,
    profile: ProfileOption = DEFAULT_PROFILE,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write one YAML file per template into this directory (default: stdout).")] = None,
) -> None:
    """Render the Kubernetes manifests of a profile (no Secret values: `up` generates those)."""
    app = get_context(ctx)
    _require_k8s(app, target)
    loaded, manifests = load(app, profile)
    if output is None:
        typer.echo(to_yaml(manifests), nl=False)
        return
    files = write(loaded, output)
    app.err.print(f"wrote {len(manifests)} objects in {len(files)} files to {output}")


def _mib(value: int) -> str:
    return budgets.fmt_mib(value)


def budget_command(ctx: typer.Context, target: TargetOption = None, profile: ProfileOption = DEFAULT_PROFILE,
                   json_output: JsonOption = False) -> None:
    """Memory requests and limits per component against the nodes; heaps and namespaces against their containers."""
    app = get_context(ctx)
    _require_k8s(app, target)
    loaded, manifests = load(app, profile)
    result = budgets.compute(loaded, manifests)
    if json_output:
        app.print_json(result.as_json())
    else:
        table = Table(title=f"memory budget (MiB) — {loaded.name}: {loaded.node.count} node(s) x {loaded.node.memory}")
        for column in ("component", "kind", "replicas", "request", "limit", "total request", "total limit"):
            table.add_column(column, justify="left" if column in ("component", "kind") else "right")
        for c in sorted(result.containers, key=lambda c: (c.one_off, -c.total_limit)):
            table.add_row(c.container + (" (one-off)" if c.one_off else ""), c.workload.split("/")[0],
                          str(c.replicas), *(f"{v / budgets.MiB:,.0f}" for v in
                                             (c.request, c.limit, c.total_request, c.total_limit)),
                          style="dim" if c.one_off else "")
        table.add_section()
        table.add_row("all long-running", "", "", "", "",
                      *(f"{sum(v) / budgets.MiB:,.0f}" for v in ([c.total_request for c in result.steady],
                                                                [c.total_limit for c in result.steady])),
                      style="bold")
        app.console.print(table)
        checks = Table(title="checks")
        for column in ("check", "where", "used", "available", ""):
            checks.add_column(column)
        for check in result.checks:
            mark = "[green]ok[/]" if check.ok else f"[red]over by {_mib(check.used - check.available)}[/]"
            checks.add_row(check.name, check.where, _mib(check.used), _mib(check.available), mark)
        app.console.print(checks)
    if not result.ok:
        app.fail(f"profile {loaded.name} is over budget", details=result.problems,
                 hint=f"lower the limits in templates/k8s/profiles/{loaded.name}.yaml or give the node(s) more memory")
    if not json_output:
        steady = sum(c.total_limit for c in result.steady)
        app.console.print(f"[bold green]within budget[/]: {_mib(steady)} of limits on "
                          f"{loaded.node.count} x {loaded.node.memory}")


images_app = typer.Typer(help="Our container images (service and Flink).", no_args_is_help=True)


@images_app.command("build")
def images_build(ctx: typer.Context, profile: ProfileOption = DEFAULT_PROFILE) -> None:
    """Build the service and Flink images into the cluster's image store (nerdctl -n k8s.io, or docker)."""
    app = get_context(ctx)
    loaded, _ = load(app, profile)
    try:
        builder = images.find_builder()
    except images.NoBuilder as exc:
        app.fail(str(exc))
    for image in images.images(loaded):
        app.err.print(f"building {image.tag} with {' '.join(builder)} ({image.dockerfile.name})")
        code = images.build(builder, image, lambda line: app.err.print(f"  {line}", markup=False, highlight=False))
        if code != 0:
            app.fail(f"building {image.tag} failed (exit code {code})", hint="the builder's output above says why")
        app.console.print(f"[green]✓[/] built {image.tag}")


# -- up / down / status (routed here from amctl.commands.stack) ------------------------------


def _pending_view(title: str, waiting: list[Pending]) -> Group:
    table = Table(title=title, title_justify="left")
    for column in ("still pending", "why", "detail"):
        table.add_column(column, overflow="fold")
    logs: list[Text] = []
    for item in waiting:
        style = "red" if item.reason in ("CrashLoopBackOff", "ImagePullBackOff") or item.failed else "yellow"
        table.add_row(item.workload, Text(item.reason, style=style), item.detail)
        if item.log_tail:
            logs.append(Text(f"last log lines of {item.workload}:", style="bold"))
            logs.extend(Text(f"  {line}", style="dim") for line in item.log_tail)
    return Group(table, *logs)


def _urls(app: AppContext, loaded: Profile) -> list[tuple[str, str]]:
    host, ports = app.settings.host, loaded.node_ports
    # the network policies admit only the stores' in-cluster clients; a port-forward reaches them from here
    forward = f"kubectl -n {loaded.namespace} port-forward"
    urls = [
        ("Segment API", f"http://{host}:{ports['segment-api']}/docs"),
        ("Ingestion API", f"http://{host}:{ports['ingestion-api']}/docs"),
        ("Communication API", f"http://{host}:{ports['communication-api']}/docs"),
        ("Rule engine health", f"http://{host}:{ports['rule-engine']}/actuator/health"),
        ("Flink UI", f"http://{host}:{ports['flink-jobmanager']}"),
        ("Grafana", f"http://{host}:{ports['grafana']}  (user admin)"),
        ("Prometheus", f"http://{host}:{ports['prometheus']}"),
        ("Kafka UI", f"http://{host}:{ports['kafka-ui']}"),
    ]
    if loaded.resources("kafka").replicas == 1:  # only a single broker advertises an address outside the cluster
        urls.append(("Kafka", f"{forward} svc/kafka {ports['kafka']}:9094, then localhost:{ports['kafka']}"))
    return [
        *urls,
        ("PostgreSQL", f"{forward} svc/postgres {ports['postgres']}:5432, "
                       f"then postgresql://postgres@{host}:{ports['postgres']}/audience"),
        ("Aerospike", f"{forward} svc/aerospike {ports['aerospike']}:3000, then {host}:{ports['aerospike']}"),
    ]


def up(app: AppContext, options: K8sOptions) -> None:
    """Render, check the budget, apply phase by phase and wait for each; the last phase submits the rule job."""
    loaded, manifests = load(app, options.profile)
    result = budgets.compute(loaded, manifests)
    if not result.ok:
        app.fail(f"refusing to deploy: profile {loaded.name} is over budget", details=result.problems,
                 hint=f"see amctl budget --target k8s --profile {options.profile}")
    started = time.monotonic()
    with cluster_session(app, options) as cluster:
        apply(cluster, [m for m in manifests if m["kind"] == "Namespace"])
        created = ensure_secrets(cluster, loaded.namespace)
        if created:
            app.err.print(f"  generated {SECRET_NAME}: {', '.join(created)}")
        for step in PHASES:
            docs = [m for m in manifests if phase(m) == step and m["kind"] != "Namespace"]
            rerun_finished_jobs(cluster, docs)
            apply(cluster, docs)
            app.err.print(f"  applied {len(docs)} objects ({step})")
            _wait_phase(app, cluster, step, docs, options.timeout_s - (time.monotonic() - started))
    app.console.print(f"[bold green]Audience Manager (k8s, {loaded.name}) ready in "
                      f"{time.monotonic() - started:.0f} s[/] in namespace {loaded.namespace}")
    for name, url in _urls(app, loaded):
        app.console.print(f"  {name:<19} {url}", highlight=False)
    app.console.print(f"  Grafana password: kubectl -n {loaded.namespace} get secret {SECRET_NAME} "
                      "-o jsonpath='{.data.grafana-admin-password}' | base64 -d", markup=False, highlight=False)
    app.console.print(f"  API key for amctl: export AMCTL_API_KEY=$(kubectl -n {loaded.namespace} get secret "
                      f"{SECRET_NAME} -o jsonpath='{{.data.{API_KEYS_ENTRY}}}' | base64 -d | sed -n 's/:admin$//p')",
                      markup=False, highlight=False)
    app.console.print("Check with: amctl smoke --target k8s    Remove with: amctl down --target k8s", highlight=False)


def _wait_phase(app: AppContext, cluster: Cluster, step: str, docs: list[Manifest], timeout_s: float) -> None:
    names = [describe(m) for m in workloads(docs)]
    if not names:
        return
    with Live(console=app.err, refresh_per_second=4, transient=True) as live:

        def progress(waiting: list[Pending], elapsed: float) -> None:
            live.update(_pending_view(f"{step}: {len(waiting)} of {len(names)} pending ({elapsed:.0f} s)", waiting))

        try:
            wait_ready(cluster, docs, max(timeout_s, 0.0), progress, app.settings.k8s_poll_s)
        except WaitTimeout as exc:
            live.stop()
            _stuck(app, step, exc.pending, f"timed out: {exc}")
        except WorkloadFailed as exc:
            live.stop()
            _stuck(app, step, [exc.pending], str(exc))
    app.err.print(f"  [green]✓[/] {step}: {', '.join(names)}")


def _stuck(app: AppContext, step: str, waiting: list[Pending], message: str) -> None:
    app.err.print(_pending_view(f"{step}: still pending", waiting))
    if any(p.reason == "ImagePullBackOff" for p in waiting):
        hint = "build our images into the cluster first: amctl images build"
    else:
        hint = "amctl status --target k8s shows every workload; kubectl describe pod NAME shows events"
    app.fail(message, hint=hint)


def down(app: AppContext, options: K8sOptions) -> None:
    """Delete the namespace (and our cluster-wide RBAC objects) and wait until it is gone."""
    loaded, manifests = load(app, options.profile)
    with cluster_session(app, options) as cluster, app.err.status(f"deleting {loaded.namespace}") as spinner:
        try:
            deleted = delete(cluster, manifests, loaded.namespace, options.timeout_s,
                             lambda what, elapsed: spinner.update(f"{what} ({elapsed:.0f} s)"), app.settings.k8s_poll_s)
        except DeleteTimeout as exc:
            spinner.stop()
            app.fail(str(exc), hint=f"kubectl get namespace {loaded.namespace} -o yaml shows what holds it")
    app.console.print(f"deleted namespace {loaded.namespace}" if deleted
                      else f"nothing to delete: namespace {loaded.namespace} does not exist")


def component_states(app: AppContext, options: K8sOptions) -> list[tuple[str, str, str]]:
    """(workload, state, detail) of every workload; state is `running` when ready."""
    _, manifests = load(app, options.profile)
    with cluster_session(app, options) as cluster:
        waiting = {p.workload: p for p in pending(cluster, manifests)}
    rows = []
    for manifest in workloads(manifests):
        item = waiting.get(describe(manifest))
        rows.append((describe(manifest), "running" if item is None else item.reason,
                     "" if item is None else item.detail))
    return rows


def admin_api_key(app: AppContext, options: K8sOptions) -> SecretStr:
    """The deployment's admin API key, from the Secret `up` generated (for smoke when AMCTL_API_KEY is unset)."""
    loaded, _ = load(app, options.profile)
    with cluster_session(app, options) as cluster:
        key = read_api_key(cluster, loaded.namespace, "admin")
    if key is None:
        app.fail(f"no admin API key in the Secret {SECRET_NAME} of namespace {loaded.namespace}",
                 hint="amctl up --target k8s generates one; or set AMCTL_API_KEY")
    return SecretStr(key)


def status(app: AppContext, options: K8sOptions, json_output: bool) -> None:
    rows = component_states(app, options)
    if json_output:
        app.print_json([{"workload": w, "state": s, "detail": d} for w, s, d in rows])
    else:
        table = Table(title=f"Audience Manager — k8s ({options.profile}, context {options.context})")
        for column in ("workload", "state", "detail"):
            table.add_column(column, overflow="fold")
        for workload, state, detail in rows:
            table.add_row(workload, f"[{'green' if state == 'running' else 'yellow'}]{state}[/]", detail)
        app.console.print(table)
    if any(state != "running" for _, state, _ in rows):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("render")(render_command)
    app.command("budget")(budget_command)
    app.add_typer(images_app, name="images")
