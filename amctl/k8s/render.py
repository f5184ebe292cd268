"""Renders a profile's Kubernetes manifests from the jinja2 templates in `templates/k8s/`.

Passwords never appear here: the manifests only reference the Secret `audience-manager-secrets`,
which `amctl up` creates with generated values when it is absent (`amctl.k8s.apply.ensure_secrets`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import yaml

from amctl.k8s.dashboards import dashboard_files
from amctl.k8s.profile import TEMPLATES_DIR, Profile, mib

Manifest = dict[str, Any]

# `amctl up` applies the objects phase by phase, waiting for each phase's workloads to be ready.
PHASE_ANNOTATION = "audience-manager.io/phase"
PHASES = ("platform", "migrations", "services", "rule-job")
SECRET_NAME = "audience-manager-secrets"
ALERTS_FILE = TEMPLATES_DIR / "monitoring" / "alerts.yml"


def _aerospike_size(quantity: str, factor: int = 1) -> str:
    """Aerospike writes sizes as `400M` (MiB)."""
    return f"{mib(quantity) * factor}M"


def environment(templates_dir: Path = TEMPLATES_DIR) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # YAML, not HTML
    )
    env.filters["mib"] = mib
    env.filters["aerospike_size"] = _aerospike_size
    return env


def template_names(templates_dir: Path = TEMPLATES_DIR) -> list[str]:
    return sorted(p.name for p in templates_dir.glob("*.yaml.j2"))


def render_text(profile: Profile, templates_dir: Path = TEMPLATES_DIR) -> dict[str, str]:
    """Each template's rendered YAML, by output file name (`10-postgres.yaml`, ...)."""
    env = environment(templates_dir)
    context = {"p": profile, "alerts_yml": ALERTS_FILE.read_text(), "dashboards": dashboard_files()}
    return {name.removesuffix(".j2"): env.get_template(name).render(context) for name in template_names(templates_dir)}


def render(profile: Profile, templates_dir: Path = TEMPLATES_DIR) -> list[Manifest]:
    """Every object of the deployment, in apply order (namespace first)."""
    manifests: list[Manifest] = []
    for text in render_text(profile, templates_dir).values():
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def to_yaml(manifests: list[Manifest]) -> str:
    return "---\n".join(yaml.safe_dump(m, sort_keys=False) for m in manifests)


def write(profile: Profile, directory: Path, templates_dir: Path = TEMPLATES_DIR) -> list[Path]:
    """One YAML file per template in `directory` (created if needed); returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_text(profile, templates_dir).items():
        docs = [doc for doc in yaml.safe_load_all(text) if doc]
        path = directory / name
        path.write_text(to_yaml(docs))
        written.append(path)
    return written


def phase(manifest: Manifest) -> str:
    annotations = manifest.get("metadata", {}).get("annotations") or {}
    return str(annotations.get(PHASE_ANNOTATION, PHASES[0]))


def describe(manifest: Manifest) -> str:
    """`Kind/name`, as kubectl names objects."""
    return f"{manifest['kind']}/{manifest['metadata']['name']}"
