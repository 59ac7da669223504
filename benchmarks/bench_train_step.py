"""Training-step speed: forward + backward + AdamW of `GPT` against `transformers.GPT2LMHeadModel`.

Same configuration, same initial weights (ours written with `save_pretrained`, loaded by transformers), same batch,
same optimizer settings, float32 on the CPU. Both compute the loss the way their users do: ours with
`model(x, targets=y)`, transformers with `model(input_ids=x, labels=x)` (it shifts the labels itself, so it
scores T-1 positions per row where we score T). Steps alternate between the two models so that both see the
same load; each is timed by the wall clock and by this process's CPU time (steadier on a shared machine). Prints
tokens/s, the ratios measured in this run, peak memory (RSS), and both losses (they follow each other closely).

By default it runs the `small` preset with GPT-2's 50,257-token vocabulary (the output layer and the loss over
it are most of the work) and with a 4,096-token vocabulary (notebook 00's tokenizer size).

    python benchmarks/bench_train_step.py                 # preset "small", batch 8 x 128 tokens, 1 thread
    python benchmarks/bench_train_step.py --preset mini --batch-size 4 --vocab-sizes 50257 --threads 2
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
    T = args.seq_len or cfg.block_size
    ours = GPT(cfg).train()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        hf = GPT2LMHeadModel.from_pretrained(d).train()
    data = torch.randint(0, vocab_size, (args.batch_size, T + 1), generator=torch.Generator().manual_seed(0))
    x, y = data[:, :-1], data[:, 1:]

    def trainer(model, loss_fn):
        # the fused kernel: the fastest AdamW on a CPU (and the same for both models)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=args.fused)
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
    print(f"preset {preset!r}, vocab {vocab_size} ({ours.num_params():,} parameters), batch {args.batch_size} x {T} "
          f"tokens, AdamW{' (fused)' if args.fused else ''}, median of {args.steps} steps")
    wall, cpu, losses, mem = ({name: [] for name in variants} for _ in range(4))
    for name, step in variants.items():
        base = reset_peak()
        losses[name].append(step())  # warm-up (AdamW allocates its state here); the peak memory of one step
        mem[name] = (peak_rss(), peak_rss() - base)
    for _ in range(args.steps):  # steps alternate between the models, so that both see the same load
        for name, step in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            losses[name].append(step())
            wall[name].append(time.perf_counter() - t0); cpu[name].append(time.process_time() - c0)
    med = lambda ts: sorted(ts)[len(ts) // 2]
    for name in variants:
        tok = args.batch_size * T
        print(f"  {name:40s} {tok / med(wall[name]):6.0f} tokens/s wall, {tok / med(cpu[name]):6.0f} per CPU-second;  "
              f"peak RSS {mib(mem[name][0])} (+{mib(mem[name][1])} in one step);  loss {losses[name][0]:.4f} -> {losses[name][-1]:.4f}")
    a, b = variants
    print(f"  ratio ours / transformers   {med(wall[b]) / med(wall[a]):5.2f}x wall-clock, {med(cpu[b]) / med(cpu[a]):5.2f}x CPU time")

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", help="GPTConfig preset")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: the preset's block_size)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per model (after 1 warm-up step); the median is reported")
    ap.add_argument("--no-fused", dest="fused", action="store_false", help="AdamW's for-loop implementation")
    return run_per_vocab(ap, run, argv)

if __name__ == "__main__":
    sys.exit(main())
