# The README's two commands: `make demo` and `make test`. Both create .venv when needed.
.PHONY: venv demo test down lint lock

venv:
	@bash scripts/bootstrap.sh

demo: venv
	@.venv/bin/amctl up

down: venv
	@.venv/bin/amctl down

test: venv
	@.venv/bin/python -m pytest -q -p no:cacheprovider

lint: venv
	.venv/bin/ruff check amctl server flinkjob tests
	.venv/bin/mypy

# Re-resolve the lock after changing pyproject.toml dependencies.
lock:
	rm -rf /tmp/amctl-lock-venv && python3.11 -m venv /tmp/amctl-lock-venv
	/tmp/amctl-lock-venv/bin/pip install -q -e ".[dev]"
	/tmp/amctl-lock-venv/bin/pip freeze --exclude-editable > requirements.lock
