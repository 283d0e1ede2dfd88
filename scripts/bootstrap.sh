#!/usr/bin/env bash
# Installs everything the demo and the tests need on a fresh machine: a venv with the project and its dev
# dependencies (all of requirements.lock), Azurite (pinned; pure JS, from npm), Debian's chromium (the page's browser
# tests) and, best effort, espeak-ng for speech-like demo audio.
# Idempotent: a second run only checks. Needs python3 (>= 3.11), node/npm; apt (as root or via sudo) for chromium.
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

# The recordings page's browser tests drive Debian's Chromium (never a browser download: Playwright only gets
# executable_path=/usr/bin/chromium).
if [ ! -x /usr/bin/chromium ]; then
  echo "==> installing chromium (Debian package; the recordings page's browser tests)"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "    cannot install chromium here (needs apt as root): install Debian's chromium package" >&2
    exit 1
  fi
fi

if ! command -v espeak-ng >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing espeak-ng (optional: speech-like demo audio)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) \
    || echo "    espeak-ng not installed; the demo will generate its audio instead"
fi
echo "==> bootstrap done"
