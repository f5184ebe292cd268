"""Renders a profile's Kubernetes manifests from the jinja2 templates in `templates/k8s/`.

Passwords never appear here: the manifests only reference the Secret `audience-manager-secrets`,
which `amctl up` creates with generated values when it is absent (`amctl.k8s.apply.ensure_secrets`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from amctl.errors import AmctlError
from amctl.k8s.dashboards import dashboard_files
from amctl.k8s.profile import TEMPLATES_DIR, Profile, ProfileError, load_profile, mib
from amctl.prometheus import ALERTS_FILE, kubernetes_config
from amctl.templating import yaml_environment

Manifest = dict[str, Any]

# `amctl up` applies the objects phase by phase, waiting for each phase's workloads to be ready.
PHASE_ANNOTATION = "audience-manager.io/phase"
PHASES = ("platform", "migrations", "services", "rule-job")
SECRET_NAME = "audience-manager-secrets"


def _aerospike_size(quantity: str, factor: int = 1) -> str:
    """Aerospike writes sizes as `400M` (MiB)."""
    return f"{mib(quantity) * factor}M"


@lru_cache(maxsize=4)
def environment(templates_dir: Path = TEMPLATES_DIR) -> jinja2.Environment:
    """One environment per templates folder: it compiles each template once (auto_reload sees edits)."""
    env = yaml_environment(templates_dir)
    env.filters["mib"] = mib
    env.filters["aerospike_size"] = _aerospike_size
    return env


def template_names(templates_dir: Path = TEMPLATES_DIR) -> list[str]:
    return sorted(p.name for p in templates_dir.glob("*.yaml.j2"))


def render_text(profile: Profile, templates_dir: Path = TEMPLATES_DIR) -> dict[str, str]:
    """Each template's rendered YAML, by output file name (`10-postgres.yaml`, ...)."""
    env = environment(templates_dir)
    context = {"p": profile, "alerts_yml": ALERTS_FILE.read_text(), "dashboards": dashboard_files(),
               "prometheus_yml": kubernetes_config(profile.namespace)}
    return {name.removesuffix(".j2"): env.get_template(name).render(context) for name in template_names(templates_dir)}


def documents(text: str) -> list[Manifest]:
    """The objects of a multi-document YAML text."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ten times faster
    return [doc for doc in yaml.load_all(text, Loader=loader) if doc]


def render(profile: Profile, templates_dir: Path = TEMPLATES_DIR) -> list[Manifest]:
    """Every object of the deployment, in apply order (namespace first)."""
    return [doc for text in render_text(profile, templates_dir).values() for doc in documents(text)]


def load(name: str) -> tuple[Profile, list[Manifest]]:
    """A profile (by name, or a profile file) and its manifests; a missing or invalid one is an AmctlError."""
    try:
        profile = load_profile(name)
    except ProfileError as exc:  # amctl.k8s.profile's own error, said as every amctl error is
        raise AmctlError(str(exc)) from None
    return profile, render(profile)


def to_yaml(manifests: list[Manifest]) -> str:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return "---\n".join(yaml.dump(m, Dumper=dumper, sort_keys=False) for m in manifests)


def write(profile: Profile, directory: Path, templates_dir: Path = TEMPLATES_DIR) -> list[Path]:
    """One YAML file per template in `directory` (created if needed); returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_text(profile, templates_dir).items():
        path = directory / name
        path.write_text(to_yaml(documents(text)))
        written.append(path)
    return written


def phase(manifest: Manifest) -> str:
    annotations = manifest.get("metadata", {}).get("annotations") or {}
    return str(annotations.get(PHASE_ANNOTATION, PHASES[0]))


def describe(manifest: Manifest) -> str:
    """`Kind/name`, as kubectl names objects."""
    return f"{manifest['kind']}/{manifest['metadata']['name']}"
