#!/usr/bin/env bash
# Capacity benchmark (~25 min): writes benchmarks/results/latest.json and prints the table in README "Performance".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m benchmarks.capacity "$@"
