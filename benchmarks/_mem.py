"""Helpers shared by the benchmarks: peak memory (Linux: resettable VmHWM; elsewhere ru_maxrss), the flags, banner and loop over vocabulary sizes of the comparisons with transformers, and whether the CPU has bf16 matrix units."""
import gc, os, resource

def _status(field):
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"): return int(line.split()[1]) * 1024  # kB -> bytes
    except OSError: pass
    return None

def reset_peak():
    "Reset the process's peak RSS (Linux `clear_refs` 5) and return the current RSS in bytes."
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
    except OSError: pass
    return _status("VmRSS") or 0

def peak_rss():
    "Peak RSS in bytes since the last reset_peak (or since the start where it cannot be reset)."
    return _status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def mib(n): return f"{n / 2**20:,.0f} MiB"

def run_per_vocab(ap, run, argv=None):
    "Add --vocab-sizes and --threads to `ap`, parse `argv`, print the banner, then run(preset, vocab_size, args) for each size."
    ap.add_argument("--vocab-sizes", default="50257,4096", help="comma-separated vocabulary sizes, one run each")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 by default: on a small shared machine two OpenMP threads stall each other")
    args = ap.parse_args(argv)
    torch_vs_transformers_banner(args.threads)
    for v in args.vocab_sizes.split(","):
        run(args.preset, int(v), args)
    return 0

def torch_vs_transformers_banner(threads: int):
    "Set torch's threads, quiet transformers, and print the versions and machine line that heads a comparison."
    import torch, transformers, warnings
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error(); warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

def cpu_has_amx() -> str:
    "yes/no from the amx_bf16 flag of /proc/cpuinfo (Linux: bf16 matrix units, Intel AMX), else unknown."
    try:
        with open("/proc/cpuinfo") as f: return "yes" if " amx_bf16" in f.read() else "no"
    except OSError: return "unknown"
