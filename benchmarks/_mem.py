"""Peak-memory helpers shared by the benchmarks (Linux: resettable VmHWM; elsewhere ru_maxrss)."""
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
