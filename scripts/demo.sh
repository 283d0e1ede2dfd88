#!/usr/bin/env bash
# The main job, locally: installs what is missing, then runs the whole loop on loopback (no Azure, no tunnel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m devstack.demo "$@"
