"""Serving benchmark (notebook 07): does the engine's continuous batching turn concurrent clients into throughput?

For each model shape (random weights): the main job's `mini` (6 layers, 192 wide, a 4,096-token vocabulary) and
GPT-2 124M's shape (50,257 tokens), a server runs in its own process (as `nanogpt-course serve` does) and 1, 2, 4, 8
and 16 concurrent clients stream completions from it. Like the users of a service, the clients ask different things
(8 prompts of 2 to 44 GPT-2 tokens; answers of 16 to 48 tokens, about 32 on average) and do not all start at once:
client i sends its first request i/c of a 1-client request's time after the first client. The table gives the
aggregate streamed tokens/s, its ratio to the 1-client rate, and p50/p99 time to first token. A burst follows: 8
clients that start together with the same prompt and answer length, the worst case for time to first token. Then,
measured in the same run:
- batch-1 decoding against the memory-bandwidth limit: the read bandwidth (summing a tensor far larger than the
  caches) divided by the bytes of weights read per token;
- the engine against `transformers` generating the same batch of prompts greedily: same tokens, and the speed ratio.

    python benchmarks/bench_serve.py --plot nbs/images/bench_serve.png   # both shapes, ~4 minutes on a 2-core CPU
    python benchmarks/bench_serve.py --models mini --clients 1,8 --requests 8   # a quick look
"""
import argparse, asyncio, json, os, resource, socket, subprocess, sys, time

GOALS = {"mini": 3.5, "gpt2": 4.0}  # issue 13: the 8-client rate over the 1-client rate
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
PROMPTS = [PROMPT, "Hello!", "What is the capital of France?", "List three colours.",  # what the clients ask
           "Explain, in simple words that a child would understand, why the sky is blue during the day but turns red "
           "and orange at sunset, and what that has to do with the air and the light of the sun.",
           "Translate into French: the cat sleeps on the warm windowsill.", "Give me a name for a small grey kitten.",
           "Summarise the plot of a story in which two old friends meet again after many years apart and find that "
           "their town has changed."]


def build(shape, seed=0):
    "(model, encoding) with random weights: `mini` with a 4,096-token GPT-2-prefix BPE, or GPT-2 124M's shape."
    import tiktoken, torch
    from nanogpt_course.model import GPT, GPTConfig
    enc = tiktoken.get_encoding("gpt2")
    if shape == "mini":  # the first 4,095 merges of GPT-2's BPE are a BPE too; <|endoftext|> takes the last id
        ranks = {b: r for b, r in enc._mergeable_ranks.items() if r < 4095}
        enc = tiktoken.Encoding("gpt2-4096", pat_str=enc._pat_str, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 4095})
        config = GPTConfig.from_preset("mini", vocab_size=4096)
    else:
        config = GPTConfig.from_preset("gpt2", vocab_size=enc.n_vocab)
    torch.manual_seed(seed)
    return GPT(config).eval(), enc


def run_server(args):
    "Child process: serve the model until killed."
    import uvicorn, torch
    from nanogpt_course.serve import create_app
    torch.set_num_threads(args.threads)
    model, enc = build(args.models)
    app = create_app({"bench": (model, enc)}, max_queue=256, max_active=args.max_active, max_tokens_limit=2 * args.max_tokens)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def ask(i, j, max_tokens, burst=False):
    "Client i's request j: its own prompt and answer length (mean max_tokens), or in a burst the same for all."
    if burst: return PROMPT, max_tokens
    return PROMPTS[(3 * i + j) % len(PROMPTS)], max_tokens // 2 + (7 * i + 5 * j) % (max_tokens + 1)


async def client(http, i, n_requests, args, out, delay=0.0, burst=False):
    await asyncio.sleep(delay)
    for j in range(n_requests):
        prompt, n = ask(i, j, args.max_tokens, burst)
        body = {"model": "bench", "prompt": prompt, "max_tokens": n, "seed": 1000 * i + j, "stream": True,
                "stream_options": {"include_usage": True}}
        t0, first, usage = time.perf_counter(), None, None
        async with http.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread(); out.append({"status": r.status_code}); continue
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]": continue
                ev = json.loads(line[6:])
                if ev.get("usage"): usage = ev["usage"]
                if first is None and ev["choices"] and ev["choices"][0]["text"]: first = time.perf_counter()
        out.append({"status": 200, "ttft": (first or time.perf_counter()) - t0, "tokens": usage["completion_tokens"]})


async def level(url, clients, n_each, args, spacing=0.0, burst=False):
    "c clients, each sending n_each requests one after another; client i starts i x spacing seconds after the first."
    import httpx
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=httpx.Limits(max_connections=clients + 4)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http, i, n_each, args, out, i * spacing, burst) for i in range(clients)))
        wall = time.perf_counter() - t0
    ok = [o for o in out if o["status"] == 200]
    return dict(clients=clients, requests=len(out), errors=len(out) - len(ok), tok_s=sum(o["tokens"] for o in ok) / wall,
                ttft50=pct([o["ttft"] for o in ok], 50), ttft99=pct([o["ttft"] for o in ok], 99),
                seconds_per_request=wall / max(1, n_each))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def peak_rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"): return int(line.split()[1]) / 1024
    except OSError: pass
    return float("nan")


def serve_levels(shape, args):
    "Start a server for `shape`, run every client level against it; returns the rows and the server's peak memory."
    import httpx
    port = free_port()
    cmd = [sys.executable, os.path.abspath(__file__), "--_server", "--port", str(port), "--models", shape,
           "--max-active", str(args.max_active), "--max-tokens", str(args.max_tokens), "--threads", str(args.threads)]
    server = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try: httpx.get(url + "/health", timeout=2); break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() - t0 > 180: raise SystemExit("the server did not start")
                time.sleep(0.2)
        asyncio.run(level(url, 1, 1, args))  # warm-up
        rows, one = [], None  # one: a request's seconds at 1 client, which spaces the clients' starts
        for c in args.levels:
            spacing = (one or 0.0) / c
            rows.append(asyncio.run(level(url, c, max(6, args.requests // c), args, spacing)))  # 6 each at least
            one = one or rows[-1]["seconds_per_request"]
            print(f"  {c:>2} client(s): {rows[-1]['tok_s']:.1f} tokens/s", flush=True)
        burst = [asyncio.run(level(url, c, 1, args, burst=True)) for c in (1, args.burst)]
        health = httpx.get(url + "/health", timeout=5).json()
        return rows, burst, health, peak_rss_mb(server.pid)
    finally:
        server.terminate(); server.wait(timeout=30)


def read_bandwidth_gbs(mb=1024, repeats=5):
    "GB/s of summing a float32 tensor far larger than the caches (best of `repeats`)."
    import torch
    x = torch.ones(mb * 2**20 // 4)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter(); x.sum(); best = min(best, time.perf_counter() - t0)
    return x.numel() * 4 / best / 1e9


def decode_rate(model, enc, n_tokens, rows=1):
    "Tokens/s of the engine's batched decode (greedy, in-process, no HTTP) with `rows` sequences."
    import torch
    from nanogpt_course.serve import Batch, Job, SamplingParams
    ids = enc.encode(PROMPT)
    batch = Batch(model, enc, rows=rows)
    jobs = [Job("m", ids[:len(ids) - i], SamplingParams(max_tokens=n_tokens, temperature=0)) for i in range(rows)]
    for j in jobs: batch.admit(j)
    batch.step(prefill_chunk=10**6)  # every prompt read: only decode steps are timed
    done0, t0 = sum(j.completion_tokens for j in jobs), time.perf_counter()
    while batch.busy(): batch.step()
    return (sum(j.completion_tokens for j in jobs) - done0) / (time.perf_counter() - t0), jobs


def versus_transformers(model, enc, n_tokens, rows=8):
    "The engine and transformers' GPT2LMHeadModel.generate on the same batch of prompts, greedy: (same?, engine, hf tok/s)."
    import tempfile, torch
    from transformers import GPT2LMHeadModel
    rate, jobs = decode_rate(model, enc, n_tokens, rows)
    ours = [j.choices[0].tokens for j in jobs]
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, eos_token_id=enc.eot_token)
        hf = GPT2LMHeadModel.from_pretrained(d).eval()
    prompts = [j.prompt_ids for j in jobs]
    width = max(map(len, prompts))
    pad = enc.eot_token
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # left padding: every row ends at its last token
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        hf.generate(ids[:, -4:], attention_mask=mask[:, -4:], max_new_tokens=2, do_sample=False, pad_token_id=pad)  # warm-up
        t0 = time.perf_counter()
        out = hf.generate(ids, attention_mask=mask, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False,
                          pad_token_id=pad, eos_token_id=None)
        hf_rate = rows * n_tokens / (time.perf_counter() - t0)
    theirs = out[:, width:].tolist()
    same = sum(o == t[:len(o)] for o, t in zip(ours, theirs))
    return same, rate, hf_rate


def report(shape, rows, burst, health, server_mb, args):
    base = rows[0]
    hdr = f"{'clients':>7} {'reqs':>5} {'err':>4} {'tok/s':>8} {'vs 1':>6} {'TTFT p50':>9} {'TTFT p99':>9} {'p99 vs 1':>9}"
    print(hdr); print("-" * len(hdr))
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>5} {r['errors']:>4} {r['tok_s']:>8.1f} {r['tok_s'] / base['tok_s']:>5.2f}x "
              f"{r['ttft50']:>9.3f} {r['ttft99']:>9.3f} {r['ttft99'] / base['ttft99']:>8.2f}x")
    b1, bc = burst
    print(f"burst: {bc['clients']} clients starting together with the same prompt and {args.max_tokens} tokens each: "
          f"TTFT p50 {bc['ttft50']:.3f} s, p99 {bc['ttft99']:.3f} s, {bc['ttft99'] / b1['ttft99']:.2f}x one such request's "
          f"({b1['ttft99']:.3f} s); {bc['tok_s']:.1f} tokens/s")
    print(f"server after the run: in_flight {health['in_flight']}, completed {health['completed']}, rejected {health['rejected']}, "
          f"failed {health['failed']}; peak memory {server_mb:.0f} MB")
    at8 = next((r for r in rows if r["clients"] == 8), None)
    if at8 is None or base["clients"] != 1: return
    ratio, ttft = at8["tok_s"] / base["tok_s"], at8["ttft99"] / base["ttft99"]
    goal = GOALS[shape]
    print(f"goal: 8 clients at least {goal}x the 1-client rate: {ratio:.2f}x, {'met' if ratio >= goal else 'missed'}")
    print(f"goal: p99 time to first token at 8 clients within 2x of 1 client: {ttft:.2f}x, {'met' if ttft <= 2 else 'missed'}")


def plot(results, path):
    "Tokens/s and time to first token (p50, p99) against clients, one line per shape: a PNG for notebook 07."
    import matplotlib; matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for shape, rows in results.items():
        cs = [r["clients"] for r in rows]
        line, = ax1.plot(cs, [r["tok_s"] / rows[0]["tok_s"] for r in rows], "o-", label=shape)
        ax1.plot([8], [GOALS[shape]], "*", ms=12, color=line.get_color(), label=f"{shape} goal at 8 clients")
        line, = ax2.plot(cs, [r["ttft99"] / rows[0]["ttft99"] for r in rows], "o-", label=f"{shape} p99")
        ax2.plot(cs, [r["ttft50"] / rows[0]["ttft99"] for r in rows], "o--", color=line.get_color(), alpha=0.6,
                 label=f"{shape} p50")
    for ax in (ax1, ax2): ax.set_xscale("log", base=2); ax.set_xticks(cs, [str(c) for c in cs]); ax.set_xlabel("clients")
    ax1.plot(cs, cs, ":", color="gray", label="ideal"); ax1.legend(fontsize=8)
    ax1.set(ylabel="streamed tokens/s ÷ 1 client's", title="throughput")
    ax2.axhline(2, color="gray", ls=":", label="goal at 8 clients: 2x"); ax2.legend(fontsize=8)
    ax2.set(ylabel="time to first token ÷ 1 client's p99", title="time to first token")
    fig.tight_layout(); fig.savefig(path, dpi=90); plt.close(fig)
    print(f"plot: {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="mini,gpt2", help="comma-separated shapes: mini, gpt2")
    ap.add_argument("--clients", default="1,2,4,8,16", help="comma-separated numbers of concurrent clients")
    ap.add_argument("--requests", type=int, default=32, help="requests per level, split across its clients (at least 6 each)")
    ap.add_argument("--max-tokens", type=int, default=32, help="mean tokens per answer (from half of it to 1.5 times)")
    ap.add_argument("--burst", type=int, default=8, help="clients that start together in the burst")
    ap.add_argument("--max-active", type=int, default=16, help="the server's --max-active (rows decoded together)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server and the in-process measurements")
    ap.add_argument("--no-hf", action="store_true", help="skip the comparison with transformers")
    ap.add_argument("--plot", default=None, help="also save the table's curves as this PNG (notebook 07 shows one)")
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--_server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._server: return run_server(args)
    shapes = args.models.split(",")
    bad = [s for s in shapes if s not in GOALS]
    if bad: ap.error(f"--models takes mini and/or gpt2, got {', '.join(bad)}")
    try: args.levels = [int(c) for c in args.clients.split(",")]
    except ValueError: ap.error(f"--clients must be comma-separated integers, got {args.clients!r}")
    if min(args.levels) < 1: ap.error(f"--clients must all be at least 1, got {args.clients}")
    for flag in ("requests", "max_active", "threads", "burst"):
        if getattr(args, flag) < 1: ap.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    if args.max_tokens < 2: ap.error(f"--max-tokens must be at least 2 (answers run from half of it), got {args.max_tokens}")
    import torch
    torch.set_num_threads(args.threads)
    print(f"== bench_serve: {args.max_tokens} tokens per answer, {args.requests} requests per level, max_active "
          f"{args.max_active}, {args.threads} torch thread(s), torch {torch.__version__}, {os.cpu_count()} CPUs")
    results = {}
    for shape in shapes:
        model, enc = build(shape)
        n = model.num_params()
        print(f"\n== {shape}: {n / 1e6:.1f}M parameters, {enc.n_vocab:,}-token vocabulary, context {model.config.block_size}")
        rows, burst, health, server_mb = serve_levels(shape, args)
        report(shape, rows, burst, health, server_mb, args)
        results[shape] = rows
        # every weight is read once per token, except the position table (one row): wte is read whole by the tied lm_head
        weight_bytes = (n - model.transformer.wpe.weight.numel()) * 4
        bw = read_bandwidth_gbs()  # measured next to the decode (a shared machine's bandwidth drifts), best of 5
        with torch.inference_mode(): rate, _ = decode_rate(model, enc, args.max_tokens)
        bw = max(bw, read_bandwidth_gbs())
        limit = bw * 1e9 / weight_bytes
        print(f"batch-1 decode (engine, in-process, float32): {rate:.1f} tokens/s; read bandwidth (summing 1 GB of "
              f"float32, best of 10 around it) {bw:.1f} GB/s / "
              f"{weight_bytes / 1e6:.0f} MB a token = {limit:.1f} tokens/s; {rate / limit:.0%} of it "
              f"(goal 50%: {'met' if rate / limit >= 0.5 else 'missed'})")
        if not args.no_hf:
            with torch.inference_mode(): same, ours, theirs = versus_transformers(model, enc, min(args.max_tokens, 16))
            print(f"vs transformers, 8 prompts of different lengths, greedy, {min(args.max_tokens, 16)} tokens: "
                  f"same tokens in {same}/8 rows; "
                  f"engine {ours:.1f} tokens/s, transformers generate {theirs:.1f} tokens/s ({ours / theirs:.2f}x)")
    if args.plot: plot(results, args.plot)
    print(f"\npeak memory of this process (the in-process models): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
