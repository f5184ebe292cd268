"""How a local stack was asked to run, remembered in `<state_dir>/stack.json`.

`amctl up --durable-broker`, `--with-monitoring` or `--flink session` choose optional parts once; a later
`amctl up` (after a crash, say), `status` and `down` read the same choice, so a restarted broker keeps its
storage and `down` stops the optional components too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

FlinkMode = Literal["mini", "session"]
FLINK_MODES: tuple[str, ...] = get_args(FlinkMode)


@dataclass(frozen=True)
class StackOptions:
    durable_broker: bool = False  # Kafka records in a local S3 server instead of the broker's RAM
    monitoring: bool = False  # a local Prometheus scraping every component
    # the rule job on a mini-cluster inside the rule engine's process, or on a JobManager and a TaskManager
    flink: FlinkMode = "mini"

    @staticmethod
    def path(state_dir: Path) -> Path:
        return state_dir / "stack.json"

    @classmethod
    def load(cls, state_dir: Path) -> StackOptions:
        """The stored choice; the defaults when none was stored (or the file is unreadable)."""
        try:
            stored = json.loads(cls.path(state_dir).read_text())
        except (OSError, ValueError):
            return cls()
        if not isinstance(stored, dict):
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: _stored(k, v) for k, v in stored.items() if k in known})

    def save(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path(state_dir).write_text(json.dumps(asdict(self)))

    def updated(self, durable_broker: bool | None = None, monitoring: bool | None = None,
                flink: FlinkMode | None = None) -> StackOptions:
        """These options with the flags that were given (None: keep what was chosen before)."""
        given: tuple[tuple[str, Any], ...] = (("durable_broker", durable_broker), ("monitoring", monitoring),
                                              ("flink", flink))
        return replace(self, **{k: v for k, v in given if v is not None})


def _stored(name: str, value: Any) -> Any:
    """A remembered value as its field's type; a Flink mode this version does not know is the default."""
    if name == "flink":
        return value if value in FLINK_MODES else "mini"
    return bool(value)
