#!/usr/bin/env bash
# Debian packages the test tiers need, installed once (CI runs as root on a fresh machine):
# chromium for the browser tier (Playwright drives it; it never downloads a browser of its own).
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "note: ${missing[*]} missing and not root: the browser tests will be skipped" \
       "(sudo apt-get install ${missing[*]})" >&2
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
