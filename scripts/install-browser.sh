#!/usr/bin/env bash
# Debian's Chromium for the end-to-end browser test (Playwright drives the system browser; it downloads none).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null; then SUDO="sudo -n"; else
    echo "chromium is missing and this user cannot install it: apt-get install -y chromium" >&2; exit 1; fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q chromium
