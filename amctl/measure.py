"""`python -m amctl.measure MODULE:FUNCTION KWARGS`: one benchmark of `amctl bench`, in a process of its own.

Calls the function with the JSON object KWARGS as keyword arguments and writes the dict of figures it
returns as the last line of stdout (JSON), whatever the function printed before.
"""

from __future__ import annotations

import importlib
import json
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 2 or ":" not in argv[0]:
        sys.stderr.write("usage: python -m amctl.measure MODULE:FUNCTION '{\"keyword\": value}'\n")
        return 2
    module, _, function = argv[0].partition(":")
    figures = getattr(importlib.import_module(module), function)(**json.loads(argv[1]))
    sys.stdout.write("\n" + json.dumps(figures) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
