#!/usr/bin/env bash
# Debian packages the test tiers need, installed once (CI runs as root on a fresh machine):
# chromium for the browser tier (Playwright drives it; it never downloads a browser of its own);
# docker.io (dockerd, started by the docker tier itself) and debootstrap (the job image's base).
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "note: ${missing[*]} missing and not root: the browser and docker tiers will be skipped" \
       "(sudo apt-get install ${missing[*]})" >&2
  exit 0
fi
apt-get update -qq
# policy-rc.d: the package must not start a system dockerd; the tests start their own
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
