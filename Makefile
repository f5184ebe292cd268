# The README's two commands: `make demo` and `make test`. Both create .venv when needed.
# `make test` leaves out the soak (minutes to hours): run it with `pytest -m soak tests/e2e/test_soak.py`.
.PHONY: venv demo test down lint lock

venv:
	@bash scripts/bootstrap.sh

demo: venv
	@.venv/bin/amctl up

down: venv
	@.venv/bin/amctl down

test: venv
	@.venv/bin/python -m pytest -q -p no:cacheprovider -m "not soak"

lint: venv
	.venv/bin/ruff check amctl server flinkjob tests
	.venv/bin/mypy

# Re-resolve the locks after changing pyproject.toml's dependencies or scripts/uv-requirements.in, then
# sync .venv to them. Existing pins are kept unless pyproject.toml needs others (`UPGRADE=--upgrade` lifts
# them all); every package carries its hashes, which the bootstrap requires.
UV_COMPILE = .venv/bin/uv pip compile --quiet --python-version 3.11 --generate-hashes --custom-compile-command "make lock"
lock: venv
	$(UV_COMPILE) $(UPGRADE) scripts/uv-requirements.in -o scripts/uv-requirements.txt
	$(UV_COMPILE) $(UPGRADE) pyproject.toml --extra dev -o requirements.lock
	@bash scripts/bootstrap.sh
