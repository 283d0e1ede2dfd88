#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh machine: a venv with the project and its dev
# dependencies (all of requirements.lock), Azurite (pinned; pure JS, from npm) and, best effort, espeak-ng for
# speech-like demo audio.
# Idempotent: a second run only checks. Needs python3 (>= 3.11), node/npm; apt only for espeak-ng.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
AZURITE_VERSION=3.35.0

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
# The venv follows requirements.lock (the one lock file; scripts/lock.py writes it from pyproject.toml): every pin,
# hash-checked, then the project itself (editable) without dependencies. A new lock or pyproject.toml reinstalls.
stamp=.venv/.installed-$(cat pyproject.toml requirements.lock | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "==> installing Python dependencies (requirements.lock)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet --require-hashes -r requirements.lock
  .venv/bin/python -m pip install --quiet --no-deps -e .
  rm -f .venv/.installed-*; touch "$stamp"
fi

if [ ! -x .tools/azurite/node_modules/.bin/azurite-blob ]; then
  echo "==> installing Azurite $AZURITE_VERSION"
  mkdir -p .tools/azurite
  npm install --silent --no-audit --no-fund --no-save --no-package-lock \
      --prefix .tools/azurite "azurite@$AZURITE_VERSION" >/dev/null
fi

# checkov pins an older pycep-parser than our tests use, so it lives in its own venv.
if [ ! -x .venv-checkov/bin/checkov ]; then
  echo "==> installing checkov (Bicep policy checks) in .venv-checkov"
  "$PY" -m venv .venv-checkov
  .venv-checkov/bin/python -m pip install --quiet --upgrade pip
  .venv-checkov/bin/python -m pip install --quiet 'checkov>=3.2,<4'
fi

if ! command -v espeak-ng >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing espeak-ng (optional: speech-like demo audio)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) \
    || echo "    espeak-ng not installed; the demo will generate its audio instead"
fi
echo "==> bootstrap done"
