"""Options shared by several commands, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

from amctl.local.options import FlinkMode
from amctl.settings import Target

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
TargetOption = Annotated[
    Target | None,
    typer.Option("--target", "-t", envvar="AMCTL_TARGET", help="Where the platform runs (env: AMCTL_TARGET)."),
]

# -- the k8s target's own options (amctl.k8s.target.K8sOptions) ------------------------------------

ProfileOption = Annotated[str, typer.Option(
    "--profile", "-p", envvar="AMCTL_K8S_PROFILE",
    help="A profile in templates/k8s/profiles (or a profile YAML file) (env: AMCTL_K8S_PROFILE).")]
ContextOption = Annotated[str, typer.Option(
    "--context", envvar="AMCTL_K8S_CONTEXT", help="The kube context to deploy to (env: AMCTL_K8S_CONTEXT).")]
KubeconfigOption = Annotated[str | None, typer.Option(
    "--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig file(s) (env: KUBECONFIG; default ~/.kube/config).")]
TimeoutOption = Annotated[float, typer.Option(
    "--timeout", envvar="AMCTL_K8S_TIMEOUT", help="Seconds to wait for readiness (env: AMCTL_K8S_TIMEOUT).")]

# -- the local target's own options (amctl.local.options.StackOptions) -----------------------------

MonitoringOption = Annotated[bool | None, typer.Option(
    "--with-monitoring/--without-monitoring",
    help="Also run Prometheus (Debian's package) with the k8s target's scrape jobs and alert rules; "
         "remembered by later `amctl up` (local target).")]
FlinkOption = Annotated[FlinkMode | None, typer.Option(
    "--flink", help="Local: run the rule job on a mini-cluster inside the rule engine (`mini`, the default) or "
                    "on a Flink JobManager and TaskManager of their own (`session`, as on k8s). Remembered.")]
DurableBrokerOption = Annotated[bool | None, typer.Option(
    "--durable-broker/--memory-broker",
    help="Local: keep the broker's records on disk (an S3 server under the state dir) or in RAM (the default). "
         "Remembered: a later plain `amctl up` keeps the choice.")]
