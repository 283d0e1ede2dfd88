#!/usr/bin/env bash
# Soak (not part of the test run): 10 minutes at half the measured capacity; RSS and fd slopes must stay flat.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m benchmarks.soak "$@"
