"""Scenario files (`scenarios/*.yaml`): a name, a description and a list of steps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from amctl.errors import AmctlError
from amctl.paths import REPO_ROOT

# the demo scenarios shipped with the repository
DEFAULT_DIR = REPO_ROOT / "scenarios"
STEP_KINDS = ("request", "create_segment", "delete_segment", "send_events", "identify", "wait_until", "load",
              "sleep")


class ScenarioError(AmctlError):
    """A scenario file that cannot be run as written."""


@dataclass(frozen=True)
class Step:
    name: str
    kind: str
    spec: dict[str, Any]
    save: str | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    steps: list[Step]
    path: Path | None = None


@dataclass
class StepResult:
    name: str
    seconds: float = 0.0
    error: str | None = None
    skipped: bool = False
    detail: str = ""


@dataclass
class ScenarioResult:
    name: str
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(s.error is None and not s.skipped for s in self.steps)


def load_scenario(path: Path) -> Scenario:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: cannot read scenario: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list):
        raise ScenarioError(f"{path}: a scenario needs 'name' and a list of 'steps'")
    steps = []
    for index, item in enumerate(raw["steps"]):
        where = f"{path.name}: steps[{index}]"
        if not isinstance(item, dict):
            raise ScenarioError(f"{where}: a step is a mapping")
        kinds = [k for k in item if k in STEP_KINDS]
        if len(kinds) != 1:
            raise ScenarioError(f"{where}: name exactly one of {', '.join(STEP_KINDS)}")
        spec = item[kinds[0]]
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise ScenarioError(f"{where}.{kinds[0]}: expected a mapping")
        steps.append(Step(name=str(item.get("name", f"{kinds[0]} #{index + 1}")), kind=kinds[0], spec=spec,
                          save=item.get("save")))
    return Scenario(name=str(raw.get("name", path.stem)), description=str(raw.get("description", "")),
                    steps=steps, path=path)


def find_scenarios(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.yaml"))


def resolve(name_or_file: str, directory: Path) -> Path:
    """A scenario by file path, or by name (file stem or `name:`) among `directory`'s files."""
    candidate = Path(name_or_file)
    if candidate.suffix in (".yaml", ".yml") and candidate.exists():
        return candidate
    for path in find_scenarios(directory):
        if path.stem == name_or_file or load_scenario(path).name == name_or_file:
            return path
    known = ", ".join(p.stem for p in find_scenarios(directory)) or "none"
    raise ScenarioError(f"no scenario '{name_or_file}' (known: {known})")
