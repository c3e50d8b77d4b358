#!/usr/bin/env bash
# Install Debian's Chromium for the browser test (tests/server/test_browser.py) when it is missing.
# Never uses `playwright install`: Playwright's Python package drives /usr/bin/chromium directly.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    echo "chromium present: $(/usr/bin/chromium --version 2>/dev/null || echo unknown version)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else echo "install-chromium: need root or sudo" >&2; exit 1; fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: apt-get not available; install Chromium at /usr/bin/chromium yourself" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-liberation
if [ ! -x /usr/bin/chromium ]; then
    echo "install-chromium: chromium did not install" >&2
    exit 1
fi
/usr/bin/chromium --version || true
