"""microGPT's training step in pure Python against the same model in PyTorch (notebook 11 quotes this output).

The same model (notebook 11's `Config()`: n_embd 16, 2 heads, 1 layer, block 16), the same starting weights, the same
names, one name per step: forward, backward and an Adam step. Pure Python is `nanogpt_course.microgpt` (with Python's
cycle collector paused, as its `train` does); PyTorch is the twin that tests/test_microgpt.py proves equal to it, in
float64 and in float32, with `torch.optim.Adam`. Steps alternate between the three so that all see the same load;
each is timed by the wall clock and by this process's CPU time (steadier on a shared machine). It also counts the
`Value`s one step builds and the bytes each takes.

    python benchmarks/bench_microgpt.py                  # 30 names, about 10 seconds
    python benchmarks/bench_microgpt.py --n-embd 64 --names 10   # 4x wider: pure Python pays per number, torch per operation
"""
import argparse, os, sys, time, tracemalloc
import torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_microgpt import to_torch, loss_t  # the torch twin the tests prove equal to microgpt
from nanogpt_course.microgpt import Adam, Config, encode, gc_paused, graph_size, init_weights, load_names, loss_fn, parameters


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="bench_microgpt.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--names", type=int, default=30, help="how many names (training steps) to time, 1 to 10000 (default 30)")
    p.add_argument("--threads", type=int, default=1, help="torch threads, 1 to the number of CPUs (default 1)")
    p.add_argument("--n-embd", type=int, default=16, help="model width, an even number from 2 to 128 (default 16, notebook 11's)")
    p.add_argument("--seed", type=int, default=0, help="which names and which starting weights (default 0)")
    args = p.parse_args(argv)
    if not 1 <= args.names <= 10_000: p.error(f"--names must be from 1 to 10000, got {args.names}")
    if not 1 <= args.threads <= (os.cpu_count() or 1): p.error(f"--threads must be from 1 to {os.cpu_count()}, got {args.threads}")
    if not (2 <= args.n_embd <= 128 and args.n_embd % 2 == 0): p.error(f"--n-embd must be an even number from 2 to 128, got {args.n_embd}")
    return args


def bytes_per_value(weights, cfg, tokens):
    "Memory held by one step's graph (traced allocations while it is alive) over the number of Values in it."
    with gc_paused():
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        loss = loss_fn(weights, cfg, tokens)
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
    return held / (graph_size(loss) - len(parameters(weights))), graph_size(loss)


def main(argv=None):
    args = parse_args(argv)
    try: names = load_names()
    except (FileNotFoundError, ValueError) as e: sys.exit(f"bench_microgpt.py: error: {e}")
    torch.set_num_threads(args.threads)
    import random
    batch = random.Random(args.seed).sample(names, args.names)
    cfg = Config(n_embd=args.n_embd)
    weights = init_weights(cfg, seed=args.seed)
    tw = {dt: to_torch(weights, dt) for dt in (torch.float64, torch.float32)}
    opt_py = Adam(parameters(weights), lr=1e-2)
    opts = {dt: torch.optim.Adam(W.values(), lr=1e-2, betas=(0.9, 0.99), eps=1e-8) for dt, W in tw.items()}

    def step_py(tokens):
        with gc_paused():
            loss = loss_fn(weights, cfg, tokens)
            opt_py.zero_grad(); loss.backward(); opt_py.step()
        return loss.data, graph_size(loss)

    def step_t(dt, tokens):
        loss = loss_t(tw[dt], cfg, tokens)
        opts[dt].zero_grad(); loss.backward(); opts[dt].step()
        return loss.item(), 0

    runs = {"pure Python (Values)": step_py, "torch float64": lambda t: step_t(torch.float64, t),
            "torch float32": lambda t: step_t(torch.float32, t)}
    for f in runs.values(): f(encode("warmup"))  # first calls pay one-off costs (torch's kernels, allocator)
    wall, cpu, last, values = {k: 0.0 for k in runs}, {k: 0.0 for k in runs}, {}, 0
    for name in batch:
        tokens = encode(name)
        for k, f in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            last[k], n = f(tokens)
            wall[k] += time.perf_counter() - w0; cpu[k] += time.process_time() - c0
            values += n
    n_letters = sum(map(len, batch)) / len(batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {cfg}: {len(parameters(weights)):,} parameters")
    print(f"{args.names} training steps (forward + backward + Adam), one name each (mean {n_letters:.1f} letters), alternating")
    ref = cpu["torch float64"]
    print(f"{'':<22}{'ms/step (wall)':>15}{'ms/step (CPU)':>15}{'CPU time / torch float64':>27}{'last loss':>11}")
    for k in runs:
        print(f"{k:<22}{wall[k] / args.names * 1e3:>15.2f}{cpu[k] / args.names * 1e3:>15.2f}{cpu[k] / ref:>26.1f}x{last[k]:>11.4f}")
    per, n_one = bytes_per_value(weights, cfg, encode("isabella"))
    print(f"a step builds {values / args.names:,.0f} Values on average ('isabella': {n_one:,}); each made-up Value holds "
          f"{per:.0f} bytes (object, float, two tuples, the lists around them), against 8 for a float64 in a tensor")


if __name__ == "__main__":
    main()
