#!/usr/bin/env bash
# The README's first command: set up, then run the main job end to end (tokenizer, pretraining,
# instruction fine-tuning, evaluation, serving) on this machine's CPU or GPU.
# Options go to `nanogpt-course run` (see `nanogpt-course run --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
bash scripts/setup.sh
exec nanogpt-course run "$@"
