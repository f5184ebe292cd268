"""Campaign templates: jinja2 in an immutable sandbox, with bounded size and render time.

A template sees the recipient's profile: `userId`, `traits` (also each trait by name, so
`{{ firstName }}` works), `totalSpent`, `purchaseCount`, `eventCount`, `firstSeen`, `lastSeen`,
`eventCounts`, and `unsubscribe_url` (the mail's one-click link). The HTML body (`bodyHtml`) is
rendered with autoescaping: a trait's `<` arrives as `&lt;`. Unknown names render empty
(`{{ nickname | default("there") }}` for a fallback).
The sandbox refuses attribute escapes (`__class__`, `mro`, …) and mutation; `range` is capped and
every loop step over it and every chunk of output checks the deadline, so no template can hold
the dispatcher for long or produce an oversized mail.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_CHARS = 64 * 1024
MAX_OUTPUT_CHARS = 256 * 1024
MAX_RANGE = 10_000
RENDER_BUDGET_S = 0.25
SAMPLE_PROFILE: dict[str, Any] = {
    "userId": "sample-user", "traits": {"email": "sample@example.com", "firstName": "Sam"}, "totalSpent": 1500.0,
    "purchaseCount": 2, "eventCount": 5, "firstSeen": "2026-01-01T00:00:00Z", "lastSeen": "2026-01-02T00:00:00Z",
    "eventCounts": {"purchase": 2, "page_view": 3},
}
SAMPLE_EXTRA: dict[str, Any] = {"unsubscribe_url": "http://127.0.0.1:30083/unsubscribe/sample-token"}


class RenderError(ValueError):
    """A template that does not parse, escapes the sandbox, or exceeds its size or time budget."""


@dataclass(frozen=True)
class _Budget:
    deadline: float

    def check(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderError(f"rendering took longer than {RENDER_BUDGET_S * 1000:.0f} ms")


class _Environment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus caps on what could allocate without bound before any output."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, autoescape: bool) -> None:
        super().__init__(undefined=ChainableUndefined, autoescape=autoescape, keep_trailing_newline=True)
        self.globals.pop("lipsum", None)
        for name in ("center", "indent", "wordwrap", "truncate", "format"):
            self.filters[name] = _capped(self.filters[name])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*" and _is_count(left, right) and _sized(left, right) * _count(left, right) > MAX_OUTPUT_CHARS:
            raise RenderError(f"repetition would exceed {MAX_OUTPUT_CHARS} characters")
        if operator == "**" and isinstance(right, int | float) and abs(right) > 64:
            raise RenderError("exponents above 64 are not allowed")
        if operator == "%" and isinstance(left, str) and any(int(w) > MAX_RANGE for w in _WIDTHS.findall(left)):
            raise RenderError(f"format widths above {MAX_RANGE} are not allowed")
        return super().call_binop(context, operator, left, right)


_WIDTHS = re.compile(r"%[-+ #0]*(\d+)")


def _is_count(left: Any, right: Any) -> bool:
    return any(isinstance(v, int) and not isinstance(v, bool) for v in (left, right)) and \
        any(isinstance(v, str | list | tuple) for v in (left, right))


def _sized(left: Any, right: Any) -> int:
    return max(len(v) for v in (left, right) if isinstance(v, str | list | tuple))


def _count(left: Any, right: Any) -> int:
    return max(v for v in (left, right) if isinstance(v, int) and not isinstance(v, bool))


def _capped(filter_: Callable[..., Any]) -> Callable[..., Any]:
    """A filter whose numeric arguments (widths) are capped, so `center(10**10)` cannot allocate."""

    @functools.wraps(filter_)
    def capped(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(a, int) and a > MAX_RANGE for a in [*args[1:], *kwargs.values()]):
            raise RenderError(f"widths above {MAX_RANGE} are not allowed")
        return filter_(*args, **kwargs)

    return capped


_ENV = _Environment(autoescape=False)
_HTML_ENV = _Environment(autoescape=True)  # a trait value is text, never markup: `<` arrives as &lt;


def template_context(profile: Mapping[str, Any]) -> dict[str, Any]:
    """What a template can name: traits first (by name), then the profile's own fields on top."""
    fields = {k: v for k, v in profile.items() if k != "history"}
    traits = fields.get("traits") or {}
    return {**(traits if isinstance(traits, Mapping) else {}), **fields}


@dataclass(frozen=True, slots=True)
class RenderedMail:
    subject: str
    body: str
    body_html: str | None = None


class MessageTemplate:
    """A parsed subject, text body and optional HTML body; `render(profile)` gives a RenderedMail or
    raises RenderError naming the part (`template.bodyHtml: …`)."""

    def __init__(self, subject: str, body: str, body_html: str | None = None) -> None:
        sources = {"subject": subject, "body": body, **({"bodyHtml": body_html} if body_html is not None else {})}
        problems = [f"template.{name}: longer than {MAX_TEMPLATE_CHARS} characters"
                    for name, source in sources.items() if len(source) > MAX_TEMPLATE_CHARS]
        if problems:
            raise RenderError("; ".join(problems))
        self._parts = {name: _parse(name, source, _HTML_ENV if name == "bodyHtml" else _ENV)
                       for name, source in sources.items()}

    def render(self, profile: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> RenderedMail:
        """`extra` adds names of the mail itself, such as `unsubscribe_url`, over the profile's."""
        budget = _Budget(time.monotonic() + RENDER_BUDGET_S)
        context = {**template_context(profile), **(extra or {}), "range": _bounded_range(budget)}
        rendered = {name: self._render(name, part.generate(context), budget) for name, part in self._parts.items()}
        return RenderedMail(" ".join(rendered["subject"].split()), rendered["body"], rendered.get("bodyHtml"))

    @staticmethod
    def _render(part: str, chunks: Iterator[str], budget: _Budget) -> str:
        out: list[str] = []
        size = 0
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > MAX_OUTPUT_CHARS:
                    raise RenderError(f"template.{part}: renders to more than {MAX_OUTPUT_CHARS} characters")
                budget.check()
                out.append(chunk)
        except RenderError as exc:
            raise RenderError(f"template.{part}: {exc}" if not str(exc).startswith("template.") else str(exc)) \
                from None
        except (SecurityError, TemplateError, ArithmeticError, TypeError, ValueError) as exc:
            raise RenderError(f"template.{part}: {_describe(exc)}") from None
        return "".join(out)


def _parse(name: str, source: str, env: _Environment) -> Template:
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise RenderError(f"template.{name}: {_describe(exc)}") from None


def _bounded_range(budget: _Budget) -> Any:
    def bounded(*args: int) -> Iterator[int]:
        values = range(*args)
        if len(values) > MAX_RANGE:
            raise RenderError(f"range() is limited to {MAX_RANGE} items")
        for value in values:
            budget.check()
            yield value

    return bounded


def _describe(exc: Exception) -> str:
    line = getattr(exc, "lineno", None)
    return f"line {line}: {exc}" if line else str(exc) or type(exc).__name__


def validate(subject: str, body: str, body_html: str | None = None) -> MessageTemplate:
    """Parse and render once against a sample profile, so a broken template fails at creation."""
    template = MessageTemplate(subject, body, body_html)
    template.render(SAMPLE_PROFILE, SAMPLE_EXTRA)
    return template
