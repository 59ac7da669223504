"""Why batching HellaSwag examples pays little on a CPU: GFLOP/s of the model's linear layers (F.linear, as the GPT calls
them) at the row counts of one packed example (~150 tokens) and of a batch of 4 and 16, in float32 and in bf16, each
against the same layer at one example's rows in the same run. When one example already reaches the kernel's rate,
putting 16 in one pass cannot make scoring faster.

    python benchmarks/bench_matmul.py            # ~2 minutes

bf16 pays only on CPUs with bf16 matrix units (Intel AMX: `amx_bf16` in /proc/cpuinfo); elsewhere it may be slower.
On a shared virtual machine the bf16 rates vary a lot from run to run (the float32 ones much less): run it twice."""
import os, time
import torch
import torch.nn.functional as F
from _mem import cpu_has_amx  # helpers shared by the benchmarks


def rate(M, K, N, dtype, min_s=0.3):
    "GFLOP/s of F.linear((1, M, K) @ (N, K)^T + bias), the best of several timed batches."
    x = torch.randn(1, M, K, dtype=dtype); w = torch.randn(N, K, dtype=dtype); b = torch.randn(N, dtype=dtype)
    for _ in range(3): F.linear(x, w, b)  # warm-up: oneDNN picks and caches its kernel
    best, spent = float("inf"), 0.0
    while spent < min_s:
        n, t = 5, time.perf_counter()
        for _ in range(n): F.linear(x, w, b)
        dt = (time.perf_counter() - t) / n; best = min(best, dt); spent += dt * n
    return 2 * M * K * N / best / 1e9


def best_rates(shapes, rows, dtypes, rounds):
    "GFLOP/s per (dtype, shape, rows), the best of `rounds` round-robin sweeps: a shared CPU's clock and neighbours vary."
    best = {}
    for _ in range(rounds):
        for dtype in dtypes:
            for k, n in shapes:
                for m in rows: best[dtype, (k, n), m] = max(best.get((dtype, (k, n), m), 0.0), rate(m, k, n, dtype))
    return best


def main():
    amx = cpu_has_amx()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 matrix units (AMX): {amx}")
    layers = {"small (128 wide)": [(128, 384), (128, 512), (512, 128)],
              "GPT-2 124M (768 wide)": [(768, 2304), (768, 3072), (3072, 768)]}
    rows = (150, 600, 2400)  # one packed example, 4, 16
    print(f"{'layers':<24} {'dtype':<9}" + "".join(f"{f'{m} rows':>11}" for m in rows) + "   16 examples / 1")
    for name, shapes in layers.items():
        res, dtypes = {}, (torch.float32, torch.bfloat16)
        best = best_rates(shapes, rows, dtypes, rounds=3)
        for dtype in dtypes:
            # the layers of one block together: total FLOPs over total time, as a forward pass sees them
            g = [sum(2 * m * k * n for k, n in shapes) / sum(2 * m * k * n / best[dtype, (k, n), m] for k, n in shapes)
                 for m in rows]
            res[dtype] = g
            print(f"{name:<24} {str(dtype).split('.')[1]:<9}" + "".join(f"{v:>11.0f}" for v in g) + f"   {g[-1] / g[0]:.2f}x")
        print(f"{'':<24} {'bf16/fp32':<9}" + "".join(f"{b / a:>10.2f}x" for a, b in zip(res[torch.float32], res[torch.bfloat16])))
    print("(GFLOP/s of one block's c_attn, c_fc and c_proj together, best of 3 sweeps; '16 examples / 1' is what batching "
          "can gain in them)")


if __name__ == "__main__":
    main()
