#!/usr/bin/env bash
# The README's test command: set up, then check that notebooks and library agree, run every
# notebook (nbdev_test) and the pytest suite (multi-process, server, browser, CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
# Two notebooks (and pytest's subprocesses) run side by side on a small machine: one thread each
# avoids oversubscribing the cores, which slows PyTorch on CPU by an order of magnitude.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
echo "== nbdev_clean + nbdev_export leave git clean"
nbdev_clean
nbdev_export
if [ -n "$(git status --porcelain -- nbs nanogpt_course)" ]; then
  git status --porcelain -- nbs nanogpt_course
  git --no-pager diff --stat -- nbs nanogpt_course
  echo "FAIL: notebooks are not clean or the library is not in sync with them (run nbdev_clean && nbdev_export, commit both)"
  exit 1
fi
echo "== README.md is nbs/index.ipynb rendered"
bash scripts/readme.sh --check
echo "== nbdev_test"
nbdev_test --n_workers 2 --timing
echo "== pytest"
# -ra lists every skip with its reason; under CI=true tests/conftest.py turns a skip into a failure, so the
# GPU-only tests (marked cuda; they skip themselves without CUDA) are deselected here, as nbdev_test skips
# the notebooks' `#| cuda` and `#| slow` cells (settings.ini tst_flags)
python3 -m pytest tests -q -ra -m "not cuda"
