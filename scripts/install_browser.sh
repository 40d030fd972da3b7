#!/usr/bin/env bash
# A system Chromium for tests/e2e/test_ui_browser.py and scripts/mlflow_screenshots.py (Playwright drives it; it
# downloads no browser of its own). Debian/Ubuntu: the distribution's `chromium` package, ~45 s and ~300 MB.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "chromium: $(command -v chromium)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || true   # a stale index fails the install; an offline one may still work
$SUDO apt-get install -y -qq chromium >/dev/null
echo "chromium: $(command -v chromium)"
