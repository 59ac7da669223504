"""Generation speed: `GPT.generate` with the KV cache, without it, and `transformers` `generate()` on the same weights.

Greedy decoding, a 16-token prompt, 200 new tokens, one sequence, float32 on the CPU. All three runs use the same
weights (our model is written with `save_pretrained` and loaded by `GPT2LMHeadModel.from_pretrained`) and the
script checks that they produce the same tokens. Runs alternate between the three so that all see the same load;
each is timed by the wall clock and by the CPU time of this process (steadier on a machine shared with other
work). Prints tokens/s, ratios measured in this run, and peak memory (RSS).

By default it runs the `mini` preset twice: with GPT-2's 50,257-token vocabulary (each step then reads the
38.6 MB output matrix, the same memory-bound work for both libraries) and with a 4,096-token vocabulary
(the size of the tokenizer notebook 00 trains), where the rest of the step shows.

    python benchmarks/bench_generate.py                           # mini, vocab 50257 and 4096, 1 thread
    python benchmarks/bench_generate.py --preset small --new-tokens 100 --vocab-sizes 50257 --threads 2
"""
import argparse, os, sys, tempfile, time
import torch
sys.path.insert(0, os.path.dirname(__file__))
from _mem import reset_peak, peak_rss, mib, run_per_vocab
from nanogpt_course.model import GPT, GPTConfig

def run(preset, vocab_size, args):
    from transformers import GPT2LMHeadModel
    torch.manual_seed(0)
    cfg = GPTConfig.from_preset(preset, vocab_size=vocab_size)
    if args.prompt_len + args.new_tokens > cfg.block_size:
        sys.exit(f"prompt {args.prompt_len} + {args.new_tokens} new tokens exceed block_size {cfg.block_size} of "
                 f"{preset!r}; transformers cannot go past it (pick a larger preset or fewer tokens)")
    ours = GPT(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        hf = GPT2LMHeadModel.from_pretrained(d).eval()
    prompt = torch.randint(0, vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    n = args.new_tokens

    def hf_generate():
        with torch.inference_mode():
            return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n,
                               do_sample=False, num_beams=1, use_cache=True, pad_token_id=0, eos_token_id=None)
    variants = {
        "GPT.generate, KV cache": lambda: ours.generate(prompt, n, temperature=0, use_cache=True),
        "GPT.generate, no cache": lambda: ours.generate(prompt, n, temperature=0, use_cache=False),
        f"transformers generate() ({hf.config._attn_implementation})": hf_generate,
    }
    print(f"preset {preset!r}, vocab {vocab_size} ({ours.num_params():,} parameters), prompt {args.prompt_len}, "
          f"{n} new tokens, greedy, best of {args.repeats}")
    outs, mem = {}, {}
    wall, cpu = ({name: float("inf") for name in variants} for _ in range(2))
    for name, fn in variants.items():  # a warm-up run of each, measuring its peak memory
        base = reset_peak(); outs[name] = fn(); mem[name] = (peak_rss(), peak_rss() - base)
    for _ in range(args.repeats):  # timed runs alternate, so that all see the same load from other processes
        for name, fn in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            outs[name] = fn()
            wall[name] = min(wall[name], time.perf_counter() - t0); cpu[name] = min(cpu[name], time.process_time() - c0)
    for name in variants:
        print(f"  {name:36s} {n / wall[name]:7.1f} tokens/s wall, {n / cpu[name]:7.1f} per CPU-second;  "
              f"peak RSS {mib(mem[name][0])} (+{mib(mem[name][1])} during a run)")
    toks = [o[0, -n:].tolist() for o in outs.values()]
    print("  same tokens from all three:", all(t == toks[0] for t in toks))
    a, b, c = variants
    for label, x, y in (("KV cache / no cache", a, b), ("KV cache / transformers", a, c)):
        print(f"  ratio {label:24s} {wall[y] / wall[x]:5.2f}x wall-clock, {cpu[y] / cpu[x]:5.2f}x CPU time")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="mini", help="GPTConfig preset (its block_size must hold prompt + new tokens)")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the best is reported")
    return run_per_vocab(ap, run, argv)

if __name__ == "__main__":
    sys.exit(main())
