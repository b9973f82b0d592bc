#!/usr/bin/env bash
# Set up a fresh machine for hera_stage_ext: system packages (PostgreSQL for the shared-site
# tests), a virtual environment in .venv, the package with its test extras (JupyterHub among
# them) and the built JupyterLab extension, and JupyterHub's proxy in .hub. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # the browser tests (never `playwright install`)
[ -x /usr/bin/rclone ] || need_apt+=(rclone)  # rclone peers and their tests (tests/test_rclone.py)
[ -x /usr/bin/rsync ] || need_apt+=(rsync)  # the reference tool of benchmarks/transfer_bench.py
# The hub tests' users run the system's Python of the same version as ours (tests/hub_fixtures.py).
py=python3.$(python3 -c 'import sys; print(sys.version_info.minor)')
[ -x "/usr/bin/$py" ] && "/usr/bin/$py" -c 'import venv' 2>/dev/null || need_apt+=("$py" "$py-venv")
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  else
    echo "setup: please install: ${need_apt[*]} (apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

# JupyterHub's proxy for the hub tests (tests/hub_fixtures.py), from the npm registry, into a
# folder git ignores: the lab extension's own package.json and yarn.lock are not touched.
CHP_VERSION=5.3.0
chp=.hub/node_modules/.bin/configurable-http-proxy
if [ "$("$chp" --version 2>/dev/null)" != "$CHP_VERSION" ]; then
  mkdir -p .hub
  npm install --prefix .hub --no-audit --no-fund --no-save --loglevel=error \
    "configurable-http-proxy@$CHP_VERSION" >/dev/null
fi

# Both extensions must be installed and enabled (the listings go to stderr).
server_list=$(.venv/bin/jupyter server extension list 2>&1)
lab_list=$(.venv/bin/jupyter labextension list 2>&1)
grep -qE "hera_stage_ext [0-9][^ ]* .*OK" <<<"$server_list" \
  || { echo "setup: the server extension is not enabled" >&2; exit 1; }
grep -qE "hera_stage_ext v[0-9].*enabled.*OK" <<<"$lab_list" \
  || { echo "setup: the lab extension is not installed" >&2; exit 1; }
echo "setup: ready (.venv)"
