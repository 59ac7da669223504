"""Pretraining in bf16 autocast against float32 on the CPU: step-time ratio and the two loss curves' difference.

The main job (notebook 09, `choose_precision`) times one step of each at planning time and pretrains in bf16 when it is
at least 1.15x faster on a CPU with bf16 units. This benchmark checks both halves of that choice on real text: the
same model from the same seed, trained for the same steps on the same batches (tinyshakespeare from
NANOGPT_COURSE_DATA, else Python's own docs, through a BPE tokenizer trained here), once in float32 and once in bf16
autocast (weights and AdamW stay float32, as in `pretrain --dtype bfloat16`). Steps alternate between the two runs so
that both see the same load on a shared machine. It prints the speed ratio (fastest step and median step) and how far
apart the loss curves are, against a stated tolerance: the 10-step moving averages of the two curves stay within
TOLERANCE nats of each other at every step (batch-to-batch noise is about that size), and the last 10 steps' means
within half of it.

    python benchmarks/bench_precision.py                       # preset mini, 8 x 256 tokens, 60 steps
    python benchmarks/bench_precision.py --preset small --steps 100 --seq-len 128
"""
import argparse, os, statistics, sys, time
from pathlib import Path
import torch
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.tokenizer import BPETokenizer, stdlib_corpus

TOLERANCE = 0.1  # nats: the most the two runs' 10-step moving averages may differ


def text() -> tuple[str, str]:
    f = Path(os.environ.get("NANOGPT_COURSE_DATA") or ".") / "tinyshakespeare.txt"
    return (f.read_text(), "tinyshakespeare") if f.exists() else (stdlib_corpus(), "Python's stdlib docs")


def moving(xs, k=10):
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mini"); ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=8); ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60); ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    corpus, name = text()
    enc = BPETokenizer.train(corpus[:300_000], a.vocab_size).to_tiktoken()
    ids = torch.tensor(enc.encode_ordinary(corpus[:2_000_000]), dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(len(ids) - a.seq_len - 1, (a.steps, a.batch_size), generator=g)
    batches = [(torch.stack([ids[s:s + a.seq_len] for s in row]), torch.stack([ids[s + 1:s + 1 + a.seq_len] for s in row]))
               for row in starts]
    cfg = GPTConfig.from_preset(a.preset, vocab_size=enc.n_vocab, block_size=max(a.seq_len, 8))
    runs = {}
    for dt in ("float32", "bfloat16"):
        torch.manual_seed(0)
        m = GPT(cfg).train()
        runs[dt] = dict(model=m, opt=torch.optim.AdamW(m.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1),
                        losses=[], times=[])
    print(f"{a.preset} ({sum(p.numel() for p in runs['float32']['model'].parameters()):,} parameters), {a.batch_size}x{a.seq_len} "
          f"tokens a step, {a.steps} steps on {name}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    for step, (x, y) in enumerate(batches):
        for dt, r in runs.items():  # alternate: both runs see the same load
            t0 = time.perf_counter()
            with torch.autocast("cpu", torch.bfloat16, enabled=dt == "bfloat16"): _, loss = r["model"](x, y)
            r["opt"].zero_grad(set_to_none=True); loss.backward()
            torch.nn.utils.clip_grad_norm_(r["model"].parameters(), 1.0); r["opt"].step()
            r["times"].append(time.perf_counter() - t0); r["losses"].append(loss.item())
    f, b = runs["float32"], runs["bfloat16"]
    fast = min(f["times"][1:]) / min(b["times"][1:])  # the first step pays one-off costs
    med = statistics.median(f["times"][1:]) / statistics.median(b["times"][1:])
    for dt, r in runs.items():
        print(f"{dt:<9} fastest step {min(r['times'][1:]) * 1000:7.0f} ms, median {statistics.median(r['times'][1:]) * 1000:7.0f} ms, "
              f"loss {r['losses'][0]:.3f} -> {sum(r['losses'][-10:]) / 10:.3f} (mean of the last 10 steps)")
    print(f"ratio bf16 / float32 speed: {fast:.2f}x (fastest steps), {med:.2f}x (median steps)")
    gap = [abs(p - q) for p, q in zip(moving(f["losses"]), moving(b["losses"]))]
    last = abs(sum(f["losses"][-10:]) - sum(b["losses"][-10:])) / 10
    print(f"loss curves: largest gap of the 10-step moving averages {max(gap):.4f} nats (at step {gap.index(max(gap))}), "
          f"last 10 steps' means {last:.4f} nats apart; tolerance {TOLERANCE} and {TOLERANCE / 2}: "
          + ("within" if max(gap) <= TOLERANCE and last <= TOLERANCE / 2 else "NOT within"))
    for i in range(0, a.steps, max(1, a.steps // 6)):
        print(f"  step {i:>4}: float32 {f['losses'][i]:.3f}  bf16 {b['losses'][i]:.3f}")


if __name__ == "__main__":
    main()
