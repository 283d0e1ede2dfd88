#!/usr/bin/env bash
# The test command: installs what is missing, then lint + the whole suite (real Azurite, real uvicorn, loopback only).
# Extra arguments go to pytest, e.g. scripts/test.sh tests/test_timeline.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
echo "==> lock (requirements.lock follows pyproject.toml; requirements.txt and streamer/requirements.txt follow it)"
.venv/bin/python scripts/lock.py --check
echo "==> ruff"
.venv/bin/ruff check .
echo "==> mypy (common/, streamer/, function_app/; strict, configured in pyproject.toml)"
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
