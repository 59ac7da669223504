"""Tokenizer benchmark: BPE training (fast vs naive) and encoding throughput (tiktoken vs pure Python).

    python benchmarks/bench_tokenizer.py                  # tinyshakespeare if NANOGPT_COURSE_DATA is set, else stdlib docstrings
    python benchmarks/bench_tokenizer.py --naive-merges 10 --vocab-size 4096

Every ratio compares two things measured in this run, on the same text. The naive trainer (recount all pairs
before each merge) would take many minutes for a whole vocabulary, so it runs a fixed number of merges, and we
compare it with the fast trainer doing the same merges (and check they are the same merges)."""
import argparse, os, resource, sys, time

from nanogpt_course.tokenizer import BPETokenizer, split_text, stdlib_corpus, train_bpe, train_bpe_naive
from collections import Counter


sys.path.insert(0, os.path.dirname(__file__))
from _mem import reset_peak, peak_rss as peak  # peak RSS helpers shared by the benchmarks

CPU = {}  # label -> best CPU seconds (this process), printed next to wall-clock times

def measure(fn, repeat=1, label=None):
    "(best wall seconds, result, peak RSS MiB during the runs); the best CPU seconds go to CPU[label]."
    reset_peak()
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
    if label: CPU[label] = best_cpu
    return best, out, peak() / 2**20


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab-size", type=int, default=4096, help="vocabulary of the fast training run (default 4096)")
    ap.add_argument("--naive-merges", type=int, default=12, help="merges the naive trainer runs on the whole text (default 12)")
    ap.add_argument("--repeat", type=int, default=3, help="encoding runs per encoder; the best is reported (default 3)")
    a = ap.parse_args(argv)

    data = os.environ.get("NANOGPT_COURSE_DATA")
    path = os.path.join(data, "tinyshakespeare.txt") if data else None
    if path and os.path.exists(path):
        text, name = open(path, encoding="utf-8").read(), "tinyshakespeare.txt"
    else:
        text, name = stdlib_corpus(1_115_394), "stdlib docstrings (NANOGPT_COURSE_DATA unset)"
    mb = len(text.encode("utf-8")) / 1e6
    print(f"corpus: {name}, {mb:.2f} MB; python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("times are wall-clock; (cpu ...) is this process's CPU time, steadier when other jobs share the CPUs")

    print("\n== training ==")
    s_fast, tok, m_fast = measure(lambda: BPETokenizer.train(text, a.vocab_size), label="fast")
    n_merges = len(tok.merges)
    print(f"fast trainer:  {a.vocab_size:,}-token vocabulary ({n_merges:,} merges) in {s_fast:.2f}s (cpu {CPU['fast']:.2f}s), peak RSS {m_fast:,.0f} MiB")
    k = a.naive_merges
    s_naive, (_, merges_naive), m_naive = measure(lambda: train_bpe_naive(text, 256 + k), label="naive")
    s_fast_k, (_, merges_fast_k), m_fast_k = measure(lambda: train_bpe(Counter(split_text(text)), 256 + k), label="fast_k")
    assert merges_naive == merges_fast_k, "the two trainers disagree"
    print(f"(the fast trainer works on {tok.train_stats['n_unique_chunks']:,} unique chunks instead of {tok.train_stats['n_chunks']:,} chunks)")
    print(f"naive trainer: {k} merges in {s_naive:.2f}s (cpu {CPU['naive']:.2f}s; {s_naive / k:.2f} s/merge), peak RSS {m_naive:,.0f} MiB")
    print(f"fast trainer:  the same {k} merges (identical: True) in {s_fast_k:.2f}s (cpu {CPU['fast_k']:.2f}s), peak RSS {m_fast_k:,.0f} MiB")
    print(f"ratio, same {k} merges, naive/fast:                     {s_naive / s_fast_k:6.1f}x (cpu {CPU['naive'] / CPU['fast_k']:.1f}x)")
    marginal = (s_fast - s_fast_k) / max(1, n_merges - k)
    print(f"per merge: naive {s_naive / k * 1000:,.0f} ms; fast {marginal * 1000:.2f} ms (marginal: (whole run - first {k} merges) / "
          f"remaining merges) -> {s_naive / k / marginal:,.0f}x")
    est = s_naive / k * n_merges
    print(f"naive for all {n_merges:,} merges, extrapolated ({s_naive / k:.2f} s x {n_merges:,}): about {est / 60:.0f} min")
    print(f"ratio, whole vocabulary, extrapolated naive / measured fast: {est / s_fast:6.0f}x  (an upper estimate: later naive merges\n"
          f"  are somewhat cheaper because the corpus gets shorter; most of the fast time is the one-off pre-tokenization)")

    print(f"\n== encoding ({name}) ==")
    def cold(t):
        t._cache.clear(); return t.encode_ordinary(text)
    for label, t in [(f"trained {tok.n_vocab}", tok), ("gpt2", BPETokenizer.gpt2())]:
        e = t.to_tiktoken()
        s_tk, ids_tk, m_tk = measure(lambda: e.encode_ordinary(text), a.repeat, "tk")
        s_py, ids_py, m_py = measure(lambda: cold(t), a.repeat, "py")
        s_warm, _, _ = measure(lambda: t.encode_ordinary(text), a.repeat, "warm")
        assert ids_py == ids_tk, f"{label}: pure Python and tiktoken ids differ"
        print(f"{label:>13}: tiktoken {mb / s_tk:5.2f} MB/s (cpu {mb / CPU['tk']:5.2f}), peak {m_tk:,.0f} MiB | "
              f"pure Python, cold cache {mb / s_py:5.2f} MB/s (cpu {mb / CPU['py']:5.2f}), warm {mb / s_warm:5.2f} MB/s (cpu {mb / CPU['warm']:5.2f}), "
              f"peak {m_py:,.0f} MiB\n{'':>15}tiktoken / pure Python (cold): {s_py / s_tk:4.1f}x (cpu {CPU['py'] / CPU['tk']:4.1f}x); ids identical")
    print(f"(the pure-Python encoder caches each chunk's ids: this text has {tok.train_stats['n_unique_chunks']:,} unique chunks "
          f"in {tok.train_stats['n_chunks']:,}, so even a cold cache is mostly hits; on a more varied corpus the cache helps less)")
    print(f"\npeak RSS of the whole run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
