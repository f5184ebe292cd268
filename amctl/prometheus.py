"""The Prometheus configuration both targets run, from one template and one rule file.

`templates/k8s/monitoring/prometheus.yml.j2` holds the scrape jobs and `alerts.yml` the alert rules;
the Kubernetes ConfigMap and the local stack's Prometheus are rendered from them, so the two differ
only in how targets are found (pod discovery vs. local addresses).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from amctl.paths import REPO_ROOT
from amctl.templating import yaml_environment

MONITORING_DIR = REPO_ROOT / "templates" / "k8s" / "monitoring"
ALERTS_FILE = MONITORING_DIR / "alerts.yml"
CONFIG_TEMPLATE = "prometheus.yml.j2"
# Jobs that read Kubernetes itself (container usage from cAdvisor, pod states from kube-state-metrics).
KUBERNETES_ONLY_JOBS = frozenset({"cadvisor", "kube-state-metrics"})


@dataclass(frozen=True)
class ScrapeTarget:
    """One local process serving Prometheus metrics."""

    component: str
    address: str  # host:port
    metrics_path: str = "/metrics"


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    return yaml_environment(MONITORING_DIR).get_template(CONFIG_TEMPLATE)


def kubernetes_config(namespace: str) -> str:
    """prometheus.yml of the Kubernetes target: pods of `namespace` discovered by their annotations."""
    return _template().render(namespace=namespace, self_address="localhost:9090",
                              rule_file="/etc/prometheus/alerts.yml", targets=[])


def local_config(self_address: str, targets: Sequence[ScrapeTarget], rule_file: Path = ALERTS_FILE) -> str:
    """prometheus.yml of the local target: the same jobs, each process at its local address."""
    if not targets:
        raise ValueError("a local Prometheus needs at least one target besides itself")
    return _template().render(namespace="", self_address=self_address, rule_file=str(rule_file),
                              targets=list(targets))
