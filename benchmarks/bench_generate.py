"""Generation speed: `GPT.generate` with the KV cache, without it, and `transformers` `generate()` on the same weights.

Greedy decoding, a 16-token prompt, 200 new tokens, one sequence, float32 on the CPU. All three runs use the same
weights (our model is written with `save_pretrained` and loaded by `GPT2LMHeadModel.from_pretrained`) and the
script checks that they produce the same tokens. Prints tokens/s, ratios measured in this run, and peak memory.

    python benchmarks/bench_generate.py                  # preset "mini" (block_size 256), 1 thread
    python benchmarks/bench_generate.py --preset small --new-tokens 100 --threads 2
"""
import argparse, os, sys, tempfile, time, warnings
import torch
sys.path.insert(0, os.path.dirname(__file__))
from _mem import reset_peak, peak_rss, mib
from nanogpt_course.model import GPT, GPTConfig

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="mini", help="GPTConfig preset (vocab 50257; block_size must hold prompt + new tokens)")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant; the best is reported")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 by default: on a small shared machine two OpenMP threads stall each other")
    args = ap.parse_args(argv)
    if args.threads: torch.set_num_threads(args.threads)
    import transformers
    from transformers import GPT2LMHeadModel
    transformers.logging.set_verbosity_error(); warnings.filterwarnings("ignore")

    torch.manual_seed(0)
    cfg = GPTConfig.from_preset(args.preset)
    if args.prompt_len + args.new_tokens > cfg.block_size:
        ap.error(f"prompt {args.prompt_len} + {args.new_tokens} new tokens exceed block_size {cfg.block_size} of "
                 f"{args.preset!r}; transformers cannot go past it (pick a larger preset or fewer tokens)")
    ours = GPT(cfg).eval()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        hf = GPT2LMHeadModel.from_pretrained(d).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    n = args.new_tokens

    def hf_generate():
        with torch.inference_mode():
            return hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, num_beams=1, use_cache=True, pad_token_id=0, eos_token_id=None)
    variants = {
        "GPT.generate, KV cache": lambda: ours.generate(prompt, n, temperature=0, use_cache=True),
        "GPT.generate, no cache": lambda: ours.generate(prompt, n, temperature=0, use_cache=False),
        f"transformers generate() ({hf.config._attn_implementation})": hf_generate,
    }
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
          f"preset {args.preset!r} ({ours.num_params():,} parameters), prompt {args.prompt_len}, "
          f"{n} new tokens, greedy, best of {args.repeats}")
    outs, mem, best = {}, {}, {name: float("inf") for name in variants}
    for name, fn in variants.items():  # warm-up run of each, measuring its peak memory
        base = reset_peak(); outs[name] = fn(); mem[name] = (peak_rss(), peak_rss() - base)
    for _ in range(args.repeats):  # timed runs alternate, so that all see the same load from other processes
        for name, fn in variants.items():
            t0 = time.perf_counter(); outs[name] = fn(); best[name] = min(best[name], time.perf_counter() - t0)
    results = {}
    for name in variants:
        results[name] = (n / best[name],)
        print(f"  {name:38s} {n / best[name]:8.1f} tokens/s   peak RSS {mib(mem[name][0])} (+{mib(mem[name][1])} during a run)")
    toks = [o[0, -n:].tolist() for o in outs.values()]
    print("same tokens from all three:", all(t == toks[0] for t in toks))
    names = list(results)
    print(f"ratio KV cache / no cache:     {results[names[0]][0] / results[names[1]][0]:.2f}x")
    print(f"ratio KV cache / transformers: {results[names[0]][0] / results[names[2]][0]:.2f}x")
    return 0

if __name__ == "__main__":
    sys.exit(main())
