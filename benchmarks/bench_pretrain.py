"""Pretraining throughput on this machine (notebook 04).

1. Training tokens/s of the `small` preset (GPT-2 tokenizer), eager against torch.compile, with each run's peak memory
   (every configuration runs in its own process, so ru_maxrss is its own).
2. Shard preparation: tokenization throughput of `prepare` with 1 and 2 processes on the same corpus.

    python benchmarks/bench_pretrain.py              # both (a few minutes: compiling on CPU is slow)
    python benchmarks/bench_pretrain.py --no-compile # eager only
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

CHILD = r"""
import json, resource, statistics, sys
from nanogpt_course.train import pretrain, read_log
cfg = json.loads(sys.argv[1])
s = pretrain(cfg.pop("data"), out_dir=cfg.pop("out"), preset="small", progress=False, eval_every=0, sample_every=0,
             save_every=10**9, **cfg)
recs = [r for r in read_log(s["out_dir"]) if "tok_s" in r]
steady = [r["tok_s"] for r in recs[cfg["max_steps"] // 3:]]  # after warm-up (and compilation)
print(json.dumps(dict(tok_s=statistics.median(steady), first_step_s=recs[0]["dt"], peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      loss=s["train_loss"])))
"""


def child(cfg: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
    if r.returncode: sys.exit(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=9, help="optimizer steps per training configuration")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    a = ap.parse_args()
    import torch
    from nanogpt_course.data import prepare, data_source
    src = data_source()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; corpus: {src}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("\n== shard preparation (GPT-2 tokenizer)")
        res = {1: 0.0, 2: 0.0}
        for rep in range(3):  # alternate and keep the best of 3: the machine is shared, its load varies
            for n in (1, 2):
                shutil.rmtree(tmp / f"prep{n}", ignore_errors=True)
                t = time.time()
                meta = prepare(src, tmp / f"prep{n}", shard_tokens=1_000_000, num_proc=n, progress=False)
                res[n] = max(res[n], meta["total_tokens"] / (time.time() - t))
        for n in (1, 2):
            print(f"  {n} process{'es' if n > 1 else ''}: {meta['total_tokens']:,} tokens, {res[n]:,.0f} tokens/s (best of 3)")
        same = [(tmp / "prep1" / s["file"]).read_bytes() for s in meta["shards"]] == [(tmp / "prep2" / s["file"]).read_bytes() for s in meta["shards"]]
        print(f"  2 processes / 1 process: {res[2] / res[1]:.2f}x  (identical shards: {same})")

        print(f"\n== training, preset small (4 layers, 128 wide, 128 context, 2,048 tokens a step, GPT-2 vocabulary), {a.steps} steps")
        base = dict(data=str(tmp / "prep2"), max_steps=a.steps)
        eager = child(dict(base, out=str(tmp / "eager"), compile=False))
        print(f"  eager:         {eager['tok_s']:8,.0f} tokens/s  first step {eager['first_step_s']:.2f}s  peak RSS {eager['peak_mb']:,.0f} MB")
        if not a.no_compile:
            comp = child(dict(base, out=str(tmp / "compiled"), compile=True))
            print(f"  torch.compile: {comp['tok_s']:8,.0f} tokens/s  first step {comp['first_step_s']:.2f}s (compiling)  peak RSS {comp['peak_mb']:,.0f} MB")
            print(f"  compile / eager: {comp['tok_s'] / eager['tok_s']:.2f}x tokens/s")


if __name__ == "__main__":
    main()
