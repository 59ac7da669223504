#!/usr/bin/env bash
# Installs everything the course needs into the current Python: torch first (a plain `pip install`
# of something that depends on torch would pull a multi-GB CUDA build), then the library with [dev].
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pip_() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "== installing torch 2.13.0"
  pip_ "torch==2.13.0"
fi
echo "== installing nanogpt-course[dev]"
pip_ -e ".[dev]"
# Headless Chromium for the browser test of the web page (Debian's package; Playwright drives it).
if [ "${NANOGPT_COURSE_BROWSER:-1}" = "1" ] && ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "== installing chromium (browser test)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  # `env` sets the variable for apt-get whether or not sudo runs it (a bare `VAR=x` after an empty $SUDO is a command)
  ($SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "   could not install chromium: the browser tests skip, and fail under CI=true (install Debian's chromium)"
fi
