#!/usr/bin/env bash
# README.md is nbs/index.ipynb rendered to Markdown (nbdev_readme needs Quarto; nbconvert does the same job here).
# `bash scripts/readme.sh` rewrites README.md; `bash scripts/readme.sh --check` fails when it is out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
rendered="$(jupyter nbconvert --to markdown --stdout --log-level WARN nbs/index.ipynb)"
if [ "${1:-}" = "--check" ]; then
  if [ "$rendered" != "$(cat README.md)" ]; then
    echo "FAIL: README.md differs from nbs/index.ipynb: edit the notebook, then run bash scripts/readme.sh"
    diff <(echo "$rendered") README.md | head -20
    exit 1
  fi
else
  printf '%s\n' "$rendered" > README.md
fi
