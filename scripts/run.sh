#!/usr/bin/env bash
# Runs the product on its embedded defaults: a local cumulus-gateway (local runtime, SQLite
# state, devices from Chronos) on http://127.0.0.1:8888, printing its URL and token.
# Set CUMULUS_TOKEN to choose the token; extra arguments go to cumulus-gateway.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
echo "== devices"
"$BIN/chronos" devices
args=(--ip=127.0.0.1 --port="${CUMULUS_PORT:-8888}")
if [ "$(id -u)" = 0 ]; then args+=(--allow-root); fi
if [ -n "${CUMULUS_TOKEN:-}" ]; then args+=("--IdentityProvider.token=$CUMULUS_TOKEN"); fi
echo "== cumulus-gateway ${args[*]} $*"
echo "   try: jupyter lab --gateway-url=http://127.0.0.1:${CUMULUS_PORT:-8888} --GatewayClient.auth_token=<token>"
exec "$BIN/cumulus-gateway" "${args[@]}" "$@"
