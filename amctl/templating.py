"""The one way amctl's jinja2 templates are rendered: YAML out, strict about undefined names."""

from __future__ import annotations

from pathlib import Path

import jinja2


def yaml_environment(templates_dir: Path) -> jinja2.Environment:
    """An environment for the YAML templates in `templates_dir` (callers cache it: it compiles each
    template once)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # YAML, not HTML
    )
