"""Training-step speed: forward + backward + AdamW of `GPT` against `transformers.GPT2LMHeadModel`.

Same configuration, same initial weights (ours written with `save_pretrained`, loaded by transformers), same batch,
same optimizer settings, float32 on the CPU. Both compute the loss the way their users do: ours with
`model(x, targets=y)`, transformers with `model(input_ids=x, labels=x)` (it shifts the labels itself, so it
scores T-1 positions per row where we score T). Prints tokens/s, the ratio measured in this run, peak memory,
and the two losses after the same steps (they follow each other closely).

    python benchmarks/bench_train_step.py                 # preset "small", batch 8 x 128 tokens, 1 thread
    python benchmarks/bench_train_step.py --preset mini --batch-size 4 --threads 2
"""
import argparse, os, sys, tempfile, time, warnings
import torch
sys.path.insert(0, os.path.dirname(__file__))
from _mem import reset_peak, peak_rss, mib
from nanogpt_course.model import GPT, GPTConfig

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", help="GPTConfig preset (vocab 50257)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: the preset's block_size)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per model (after 1 warm-up step); the median is reported")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 by default: on a small shared machine two OpenMP threads stall each other")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers
    from transformers import GPT2LMHeadModel
    transformers.logging.set_verbosity_error(); warnings.filterwarnings("ignore")

    torch.manual_seed(0)
    cfg = GPTConfig.from_preset(args.preset)
    T = args.seq_len or cfg.block_size
    ours = GPT(cfg).train()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        hf = GPT2LMHeadModel.from_pretrained(d).train()
    data = torch.randint(0, cfg.vocab_size, (args.batch_size, T + 1), generator=torch.Generator().manual_seed(0))
    x, y = data[:, :-1], data[:, 1:]

    def trainer(model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
        def step():
            loss = loss_fn(model)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()
        return step
    variants = {
        "GPT (ours)": trainer(ours, lambda m: m(x, targets=y)[1]),
        f"transformers GPT2LMHeadModel ({hf.config._attn_implementation})": trainer(hf, lambda m: m(input_ids=x, labels=x).loss),
    }
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads; "
          f"preset {args.preset!r} ({ours.num_params():,} parameters), batch {args.batch_size} x {T} tokens, "
          f"AdamW, {args.steps} timed steps")
    # steps alternate between the models, so that both see the same load from whatever else runs on the machine
    times = {name: [] for name in variants}; losses = {name: [] for name in variants}; mem = {}
    for name, step in variants.items():
        base = reset_peak()
        losses[name].append(step())  # warm-up (AdamW allocates its state here); peak memory of one step
        mem[name] = (peak_rss(), peak_rss() - base)
    for _ in range(args.steps):
        for name, step in variants.items():
            t0 = time.perf_counter(); losses[name].append(step()); times[name].append(time.perf_counter() - t0)
    res = {}
    for name in variants:
        res[name] = tps = args.batch_size * T / sorted(times[name])[len(times[name]) // 2]  # median step
        print(f"  {name:42s} {tps:9.0f} tokens/s   peak RSS {mib(mem[name][0])} (+{mib(mem[name][1])} in one step)"
              f"   loss {losses[name][0]:.4f} -> {losses[name][-1]:.4f}")
    a, b = res.values()
    print(f"ratio ours / transformers: {a / b:.2f}x")
    return 0

if __name__ == "__main__":
    sys.exit(main())
