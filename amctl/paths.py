"""Where the source checkout's files are: templates, scenarios and the lock live beside the packages, not in them.

amctl runs from the checkout (`make venv` installs it editable), so the repository root is the parent of
this package. The rule engine finds its own import root in flinkjob/job.py: amctl and flinkjob do not
import each other.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
