#!/usr/bin/env bash
# Debian packages the test tiers need, installed once (CI runs as root on a fresh machine):
# chromium for the browser tier (Playwright drives it; it never downloads a browser of its own);
# docker.io (dockerd, started by the docker tier itself) and debootstrap (the job image's base);
# bubblewrap, the local runtime's kernel sandbox (gateway/sandbox.py).
# configurable-http-proxy (JupyterHub's proxy, for the hub tier) comes from the npm registry.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
need_chp=0
command -v configurable-http-proxy >/dev/null 2>&1 || need_chp=1
[ $need_chp = 1 ] && ! command -v npm >/dev/null 2>&1 && missing+=(nodejs npm)
[ ${#missing[@]} -eq 0 ] && [ $need_chp = 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  [ $need_chp = 1 ] && echo "note: configurable-http-proxy missing and not root: the hub tier" \
       "will be skipped (sudo npm install -g configurable-http-proxy)" >&2
  [ ${#missing[@]} -gt 0 ] && echo "note: ${missing[*]} missing and not root: the browser, docker and sandbox tiers will be skipped" \
       "(sudo apt-get install ${missing[*]})" >&2
  exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  # policy-rc.d: the package must not start a system dockerd; the tests start their own
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ $need_chp = 1 ]; then
  npm install -g --silent configurable-http-proxy >/dev/null \
    || echo "warning: npm could not install configurable-http-proxy: the hub tier will be skipped" >&2
fi
