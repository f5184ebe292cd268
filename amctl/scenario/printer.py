"""Scenarios on a console as they run: a line per scenario, a line per step as it ends (`scenario run`, `smoke`)."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from amctl.scenario.model import Scenario, ScenarioResult, StepResult


class ScenarioPrinter:
    """A ScenarioObserver printing to `console`; scenario files and answers are shown as they are, never as markup."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def started(self, scenario: Scenario) -> None:
        self.console.print(Text.assemble((f"▶ {scenario.name}", "bold"), f" — {scenario.description}"))

    def step(self, step: StepResult) -> None:
        if step.error is None:
            self.console.print(Text.assemble("  ", ("✓", "green"), f" {step.name} ",
                                             (f"({step.seconds:.2f} s) {step.detail}", "dim")))
        else:
            self.console.print(Text.assemble("  ", (f"✗ {step.name}", "red"), f" ({step.seconds:.2f} s)"))
            self.console.print(f"    {step.error}", markup=False)

    def finished(self, result: ScenarioResult) -> None:
        skipped = sum(1 for s in result.steps if s.skipped)
        if skipped:
            self.console.print(f"  {skipped} step(s) not run after the failure", style="yellow")
