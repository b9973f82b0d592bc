#!/usr/bin/env bash
# Set up everything (scripts/setup.sh), make the demo archive and start JupyterLab on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hera-stage demo --dir "${HERA_STAGE_DEMO_DIR:-hera-stage-demo}" "$@"
