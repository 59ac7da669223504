#!/usr/bin/env bash
# Runs every benchmark, one after the other (each prints ratios measured in its own run), and keeps
# their output in benchmarks/results/ (git-ignored). The README quotes these outputs.
# Run it on an otherwise idle machine: the ratios hold under load, the absolute numbers do not.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
mkdir -p benchmarks/results
for b in tokenizer generate train_step pretrain hellaswag serve matmul microgpt precision; do
  echo "== benchmarks/bench_$b.py"
  python benchmarks/bench_$b.py 2>&1 | tee "benchmarks/results/bench_$b.txt"
done
# HellaSwag's own setting as well: GPT-2 124M's shape and GPT-2's tokenizer (random weights: speed only)
echo "== benchmarks/bench_hellaswag.py --preset gpt2 --tokenizer gpt2 --n 40 --repeats 2"
python benchmarks/bench_hellaswag.py --preset gpt2 --tokenizer gpt2 --n 40 --repeats 2 2>&1 | tee benchmarks/results/bench_hellaswag_gpt2.txt
# and the main job's own evaluation: its model size, its 4,096-token vocabulary, its short held-out questions
echo "== benchmarks/bench_hellaswag.py --preset mini --tokenizer 4096 --n 200 --ctx-words 16 --end-words 3"
python benchmarks/bench_hellaswag.py --preset mini --tokenizer 4096 --n 200 --ctx-words 16 --end-words 3 2>&1 | tee benchmarks/results/bench_hellaswag_mini.txt
# the three again in bf16 (every mode under bf16 autocast): on a CPU with AMX, bf16 matrix units that batching can feed
echo "== benchmarks/bench_hellaswag.py --dtype bfloat16 (three settings)"
python benchmarks/bench_hellaswag.py --dtype bfloat16 2>&1 | tee benchmarks/results/bench_hellaswag_bf16.txt
python benchmarks/bench_hellaswag.py --dtype bfloat16 --preset gpt2 --tokenizer gpt2 --n 40 --repeats 2 2>&1 | tee benchmarks/results/bench_hellaswag_gpt2_bf16.txt
python benchmarks/bench_hellaswag.py --dtype bfloat16 --preset mini --tokenizer 4096 --n 200 --ctx-words 16 --end-words 3 2>&1 | tee benchmarks/results/bench_hellaswag_mini_bf16.txt
# where evaluate's time goes at batch 1 and batch 16 (torch.profiler), in the two settings the README profiles
echo "== benchmarks/bench_hellaswag.py --profile (GPT-2 shape, main job)"
python benchmarks/bench_hellaswag.py --preset gpt2 --tokenizer gpt2 --n 40 --profile 2>&1 | tee benchmarks/results/bench_hellaswag_gpt2_profile.txt
python benchmarks/bench_hellaswag.py --preset mini --tokenizer 4096 --n 200 --ctx-words 16 --end-words 3 --profile 2>&1 | tee benchmarks/results/bench_hellaswag_mini_profile.txt
# and in bf16 (the README quotes the main job's and the small model's)
python benchmarks/bench_hellaswag.py --preset mini --tokenizer 4096 --n 200 --ctx-words 16 --end-words 3 --profile --dtype bfloat16 2>&1 | tee benchmarks/results/bench_hellaswag_mini_bf16_profile.txt
python benchmarks/bench_hellaswag.py --profile --dtype bfloat16 2>&1 | tee benchmarks/results/bench_hellaswag_bf16_profile.txt
