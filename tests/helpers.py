"""Small helpers the test files share (imported as `from helpers import ...`: pytest puts tests/ on sys.path)."""
import socket


def free_port() -> int:
    "A TCP port on 127.0.0.1 that nothing listens on right now (bound, then released)."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def save_course_checkpoint(path, model, enc, kind: str = "pretrain", step: int = 0):
    "Save `model` with its tokenizer in the course's checkpoint schema (notebook 03b), as the loaders expect it."
    from nanogpt_course.checkpoint import checkpoint_dict, save_checkpoint
    save_checkpoint(path, checkpoint_dict(model, enc, kind, step))
    return path


# a tiny model and batch: 2 layers, 32 wide, a 320-token vocabulary; each step is a few ms
RUN = dict(preset="tiny", n_embd=32, batch_size=4, seq_len=32, total_batch_tokens=512, max_steps=9, lr=3e-3,
           warmup_steps=2, eval_every=3, eval_batches=2, sample_every=0, save_every=3, keep_last=2, progress=False)
