#!/usr/bin/env bash
# Creates .venv and installs the locked dependencies; re-installs only when requirements.lock changed.
# Checks the prerequisites first and says in one line what is missing and how to get it.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { printf 'amctl setup: %s\n' "$1" >&2; exit 2; }

PY=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 \
     && "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
    PY=$(command -v "$candidate"); break
  fi
done
[ -n "$PY" ] || fail "Python 3.11 is required (found: $(python3 --version 2>&1 || echo none)); install it, e.g. 'pyenv install 3.11' or 'apt-get install python3.11 python3.11-venv'."

command -v java >/dev/null 2>&1 || fail "Java 17+ is required by the rule engine (PyFlink); install it, e.g. 'apt-get install openjdk-17-jre-headless'."
java_major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/.*java\.specification\.version = \([0-9]*\).*/\1/p')
[ "${java_major:-0}" -ge 17 ] || fail "Java 17+ is required by the rule engine (found Java ${java_major:-unknown}); install openjdk-17-jre-headless."

if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $PY ..." >&2
  "$PY" -m venv .venv || fail "could not create .venv; install the venv module, e.g. 'apt-get install python3.11-venv'."
fi

# pip's only job: the pinned uv, hash-checked. This machine's pip config names local mirror folders
# that may be absent; those warnings are noise.
pip_install() {
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" \
    2> >(grep -v "^WARNING: Location 'file:///" >&2)
}

# uv installs the lock: every package must match one of its hashes, and sync removes what the lock dropped.
uv_pip() { .venv/bin/uv pip "$1" --quiet --python .venv/bin/python "${@:2}"; }

want=$(sha256sum requirements.lock scripts/uv-requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
have=$(cat .venv/.installed 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "Installing locked dependencies into .venv (first time takes a minute or two) ..." >&2
  pip_install --require-hashes --no-deps -r scripts/uv-requirements.txt
  # --compile-bytecode: as pip does, so the services and the rule job do not each compile on their first start
  uv_pip sync --require-hashes --compile-bytecode requirements.lock
  # our own package, built with the locked setuptools (nothing unhashed is downloaded for the build)
  uv_pip install --no-deps --no-build-isolation -e .
  echo "$want" > .venv/.installed
fi
