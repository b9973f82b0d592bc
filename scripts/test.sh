#!/usr/bin/env bash
# Set up everything (scripts/setup.sh) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The lab extension's unit tests (jest), then everything else (pytest: server, engine, browser,
# notebook and PostgreSQL tests).
PATH="$PWD/.venv/bin:$PATH" jlpm test --silent
exec .venv/bin/python -m pytest "$@"
