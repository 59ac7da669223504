"""Serving benchmark (notebook 07): requests/s, p50/p99 latency, time to first token and streaming tokens/s
at 1, 8 and 32 concurrent clients against `nanogpt-course serve` on loopback, with a tiny GPT.

The server runs in its own process (started by this script, like `nanogpt-course serve`); clients stream chat
completions with httpx. The reference is the same model generating the same number of tokens in-process, with no
HTTP at all, measured in the same run: the ratio says what the server costs (or gains, by interleaving).

    python benchmarks/bench_serve.py                       # ~1-2 minutes on a 2-core CPU
    python benchmarks/bench_serve.py --preset small --max-tokens 64 --requests 8
"""
import argparse, asyncio, json, os, resource, socket, subprocess, sys, time
from statistics import median


def build_model(preset, seed=0):
    import tiktoken, torch
    from nanogpt_course.model import GPT, GPTConfig
    enc = tiktoken.get_encoding("gpt2")
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset(preset, vocab_size=enc.n_vocab, block_size=256)).eval(), enc


def run_server(args):
    "Child process: serve the model until killed."
    import uvicorn, torch
    from nanogpt_course.serve import create_app
    torch.set_num_threads(args.threads)
    model, enc = build_model(args.preset)
    app = create_app({"bench": (model, enc)}, max_queue=args.max_queue, max_active=args.max_active)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


PROMPT = "Write a short story about a lighthouse keeper."


def direct_tokens_per_s(args):
    "Reference: the same generation in-process, sequentially, no HTTP."
    import torch
    from nanogpt_course.serve import Generation, SamplingParams, render_chat
    torch.set_num_threads(args.threads)
    model, enc = build_model(args.preset)
    ids = enc.encode(render_chat([{"role": "user", "content": PROMPT}]), allowed_special="all")
    n = t = 0
    with torch.no_grad():
        list(Generation(model, enc, ids, SamplingParams(max_tokens=4, seed=0)))  # warm-up
        t0 = time.perf_counter()
        for i in range(args.requests):
            g = Generation(model, enc, ids, SamplingParams(max_tokens=args.max_tokens, seed=i))
            list(g); n += g.completion_tokens
        t = time.perf_counter() - t0
    return n / t


async def client(http, i, n_requests, args, out):
    for j in range(n_requests):
        body = {"model": "bench", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": args.max_tokens,
                "seed": 1000 * i + j, "stream": True, "stream_options": {"include_usage": True}}
        t0 = time.perf_counter(); first = None; usage = None
        async with http.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread(); out.append({"status": r.status_code}); continue
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]": continue
                ev = json.loads(line[6:])
                if ev.get("usage"): usage = ev["usage"]
                if first is None and ev["choices"] and ev["choices"][0]["delta"].get("content"): first = time.perf_counter()
        t1 = time.perf_counter()
        out.append({"status": 200, "latency": t1 - t0, "ttft": (first or t1) - t0, "tokens": usage["completion_tokens"],
                    "stream_s": t1 - (first or t1)})


async def level(url, concurrency, args):
    import httpx
    n_each = max(1, args.requests // concurrency) if concurrency > 1 else args.requests
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http, i, n_each, args, out) for i in range(concurrency)))
        wall = time.perf_counter() - t0
    ok = [o for o in out if o["status"] == 200]
    per_stream = [o["tokens"] / o["stream_s"] for o in ok if o["stream_s"] > 0]
    return dict(concurrency=concurrency, requests=len(out), errors=len(out) - len(ok), wall=wall,
                rps=len(ok) / wall, p50=pct([o["latency"] for o in ok], 50), p99=pct([o["latency"] for o in ok], 99),
                ttft50=pct([o["ttft"] for o in ok], 50), ttft99=pct([o["ttft"] for o in ok], 99),
                tok_s=sum(o["tokens"] for o in ok) / wall, stream_tok_s=median(per_stream) if per_stream else 0.0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def peak_rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"): return int(line.split()[1]) / 1024
    except OSError: pass
    return float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny", help="model preset (random weights, GPT-2 vocabulary, 256-token context)")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated numbers of concurrent clients")
    ap.add_argument("--requests", type=int, default=32, help="requests per level (split across the clients; 1 client: all)")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens per answer")
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--max-active", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in the server and the reference (1: no OpenMP oversubscription on a busy CPU)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--_server", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._server: return run_server(args)
    import httpx, torch
    levels = [int(c) for c in args.concurrency.split(",")]
    args.requests = max(args.requests, max(levels))
    print(f"== bench_serve: preset {args.preset}, {args.max_tokens} tokens per answer, {args.requests} requests per level, "
          f"max_active {args.max_active}, {args.threads} torch thread(s), torch {torch.__version__}, {os.cpu_count()} CPUs")
    ref = direct_tokens_per_s(args)
    print(f"reference: in-process generation, one request at a time, no HTTP: {ref:.1f} tokens/s")

    port = args.port or free_port()
    cmd = [sys.executable, os.path.abspath(__file__), "--_server", "--port", str(port), "--preset", args.preset,
           "--max-queue", str(args.max_queue), "--max-active", str(args.max_active), "--threads", str(args.threads)]
    server = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try: httpx.get(url + "/health", timeout=2); break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() - t0 > 120: raise SystemExit("server did not start")
                time.sleep(0.2)
        asyncio.run(level(url, 1, argparse.Namespace(**{**vars(args), "requests": 2})))  # warm-up
        rows = [asyncio.run(level(url, c, args)) for c in levels]
        health = httpx.get(url + "/health", timeout=5).json()
        server_mb = peak_rss_mb(server.pid)
    finally:
        server.terminate(); server.wait(timeout=30)
    hdr = f"{'clients':>7} {'reqs':>5} {'err':>4} {'req/s':>7} {'p50 s':>7} {'p99 s':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'tok/s':>7} {'vs ref':>7} {'tok/s/stream':>13}"
    print(hdr); print("-" * len(hdr))
    for r in rows:
        print(f"{r['concurrency']:>7} {r['requests']:>5} {r['errors']:>4} {r['rps']:>7.2f} {r['p50']:>7.3f} {r['p99']:>7.3f} "
              f"{r['ttft50']:>9.3f} {r['ttft99']:>9.3f} {r['tok_s']:>7.1f} {r['tok_s'] / ref:>6.2f}x {r['stream_tok_s']:>13.1f}")
    print(f"server after the run: in_flight {health['in_flight']}, completed {health['completed']}, rejected {health['rejected']}, "
          f"failed {health['failed']}")
    client_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory: server process {server_mb:.0f} MB, client process (incl. the reference model) {client_mb:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
