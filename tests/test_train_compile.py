"""torch.compile in pretraining (its own file: it needs inductor, and a C++ compiler for the CPU)."""
import pytest
from nanogpt_course.train import pretrain, read_log
from helpers import RUN  # `data` is conftest.py's fixture: tokenizer + shards built in the test


def test_compile_keeps_eval_and_sampling_working(data):
    "torch.compile on: validation loss and samples (from the uncompiled module) still work."
    pytest.importorskip("torch._inductor")
    s = pretrain(data / "data", out_dir=data / "compiled", compile=True, **{**RUN, "max_steps": 3, "sample_every": 2, "n_layer": 1})
    recs = read_log(data / "compiled")
    assert s["steps"] == 3 and any("val_loss" in r for r in recs) and any(r.get("sample") for r in recs)
    # and it trains the same model as eager: the same losses, step by step, up to float rounding
    pretrain(data / "data", out_dir=data / "eager", compile=False, **{**RUN, "max_steps": 3, "sample_every": 2, "n_layer": 1})
    loss = lambda d: [r["loss"] for r in read_log(d) if "loss" in r]
    assert len(loss(data / "compiled")) == 3 and loss(data / "compiled") == pytest.approx(loss(data / "eager"), abs=1e-3)
