#!/usr/bin/env bash
# Runs the product on its embedded defaults: a local cumulus-gateway (local runtime, SQLite
# state, devices from Chronos) on http://127.0.0.1:8888, with the "Cumulus GPU" kernelspec
# installed in .venv pointing at it, and a notebook ready in .run/hello.ipynb.
# CUMULUS_TOKEN picks the token (else one is made and kept in .run/token, mode 600),
# CUMULUS_PORT the port; extra arguments go to cumulus-gateway. The gateway reads its token from
# that file (--token-file): it is never on its command line, where `ps` would show it to every
# local user, nor in its environment.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT="${CUMULUS_PORT:-8888}"
mkdir -p .run
umask 077
if [ -n "${CUMULUS_TOKEN:-}" ]; then
  printf '%s' "$CUMULUS_TOKEN" > .run/token
elif [ ! -s .run/token ]; then
  "$BIN/python" -c 'import secrets; print(secrets.token_hex(24), end="")' > .run/token
fi
chmod 600 .run/token
unset CUMULUS_TOKEN
umask 022
echo "== devices"
"$BIN/chronos" devices
echo "== kernelspec"
"$BIN/cumulus" kernelspec install --sys-prefix --gpu 0.5 --duration 1h \
  --gateway "http://127.0.0.1:$PORT" --token-file "$PWD/.run/token"
"$BIN/python" - <<'PY'
import json, pathlib
cell = "import os\nprint('partition', os.environ['CHRONOS_PARTITION_ID'], 'on', os.environ['CHRONOS_GPU_DEVICES'])"
nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "hello", "metadata": {},
                 "outputs": [], "source": cell}],
      "metadata": {"kernelspec": {"name": "cumulus-gpu-0.5-1h", "display_name": "Cumulus GPU (0.5 GPU, 1h)",
                                  "language": "python"}},
      "nbformat": 4, "nbformat_minor": 5}
path = pathlib.Path(".run/hello.ipynb")
if not path.exists():
    path.write_text(json.dumps(nb, indent=1))
PY
echo "== notebook ready: .run/hello.ipynb (open it with: .venv/bin/jupyter lab .run/hello.ipynb)"
args=(--ip=127.0.0.1 --port="$PORT" "--token-file=$PWD/.run/token")
if [ "$(id -u)" = 0 ]; then args+=(--allow-root); fi
echo "== cumulus-gateway: http://127.0.0.1:$PORT (its token is in .run/token)"
echo "   or: JUPYTER_GATEWAY_AUTH_TOKEN=\$(cat .run/token) jupyter lab --gateway-url=http://127.0.0.1:$PORT"
exec "$BIN/cumulus-gateway" "${args[@]}" "$@"
