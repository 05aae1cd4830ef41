#!/usr/bin/env bash
# Runs the product on its embedded defaults: Chronos on this host's devices, with its
# watchdog enforcing expiry (and NVML memory caps where an NVIDIA driver is present).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
echo "== devices"
"$BIN/chronos" devices
echo "== state: ${CHRONOS_STATE:-$("$BIN/python" -c 'from chronos import default_state_path as p; print(p())')}"
"$BIN/chronos" list
echo "== try, in another shell:  .venv/bin/chronos run any 0.5 30m -- python your_script.py"
exec "$BIN/chronos" watch
