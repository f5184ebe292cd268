"""JUnit XML for CI: one testsuite per scenario, one testcase per step."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from amctl.scenario.model import ScenarioResult


def write_junit(results: list[ScenarioResult], path: Path) -> None:
    suites = ET.Element("testsuites", name="amctl scenarios")
    for result in results:
        failures = sum(1 for s in result.steps if s.error is not None)
        suite = ET.SubElement(
            suites, "testsuite", name=result.name, tests=str(len(result.steps)), failures=str(failures),
            time=f"{result.seconds:.3f}",
        )
        for step in result.steps:
            case = ET.SubElement(suite, "testcase", classname=result.name, name=step.name, time=f"{step.seconds:.3f}")
            if step.error is not None:
                failure = ET.SubElement(case, "failure", message=step.error.splitlines()[0])
                failure.text = step.error
            elif step.skipped:
                ET.SubElement(case, "skipped", message="an earlier step failed")
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)
