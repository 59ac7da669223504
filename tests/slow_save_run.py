"""`nanogpt-course pretrain` with a torch.save that stops half-way through the run's 2nd checkpoint and waits there
(tests/test_train.py kills it at that moment). Test scaffolding: the library knows nothing of it."""
import sys, time

import torch

_save, _calls = torch.save, [0]


class _PausingFile:
    "Passes writes through; after 4 KiB, flushes, says so on stderr and sleeps (the test's SIGKILL lands here)."
    def __init__(self, f): self.f, self.n = f, 0
    def write(self, b):
        n = self.f.write(b); self.n += len(b)
        if self.n > 4096 and self.n - len(b) <= 4096:
            self.f.flush(); print(f"[save paused at {self.n} bytes]", file=sys.stderr, flush=True); time.sleep(120)
        return n
    def flush(self): self.f.flush()


def _slow_save(obj, f, *args, **kwargs):
    _calls[0] += 1
    return _save(obj, _PausingFile(f) if _calls[0] == 2 else f, *args, **kwargs)


if __name__ == "__main__":
    torch.save = _slow_save
    from nanogpt_course.train import cli
    sys.exit(cli(sys.argv[1:]))
