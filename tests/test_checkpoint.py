"""Notebook 03b (`nanogpt_course.checkpoint`): one checkpoint schema that every writer of the course uses, and one loader."""
import pytest
import torch

from nanogpt_course.checkpoint import CheckpointError, checkpoint_dict, latest_checkpoint, load_checkpoint, load_model, save_checkpoint
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.tokenizer import get_tokenizer

from helpers import RUN

SCHEMA = {"model", "config", "tokenizer", "kind", "step"}


@pytest.fixture(scope="module")
def enc():
    return get_tokenizer("gpt2")


def test_the_schema_round_trips_through_save_and_load_model(tmp_path, enc):
    m = GPT(GPTConfig.from_preset("tiny", vocab_size=enc.n_vocab, n_embd=32))
    ck = checkpoint_dict(m, enc, "pretrain", step=5, val_loss=1.5)
    assert SCHEMA <= set(ck) and ck["kind"] == "pretrain" and ck["step"] == 5 and ck["val_loss"] == 1.5
    assert all(v.device.type == "cpu" for v in ck["model"].values())
    save_checkpoint(tmp_path / "ckpt_0000005.pt", ck)
    loaded, e = load_model(tmp_path)
    x = torch.randint(0, enc.n_vocab, (2, 6))
    assert e.n_vocab == enc.n_vocab and torch.equal(loaded(x)[0], m.eval()(x)[0])


def test_every_writer_of_the_course_uses_the_schema(data, tmp_path):
    "Pretraining (04b), fine-tuning (05) and the classifier (12) write checkpoints that notebook 03b's readers understand."
    from nanogpt_course.train import pretrain
    from nanogpt_course.sft import builtin_instructions, finetune
    from nanogpt_course.classify import train_classifier
    pre = pretrain(data / "data", out_dir=tmp_path / "pre", **{**RUN, "max_steps": 2})
    sft = finetune(pre["checkpoint"], builtin_instructions()[:40], tmp_path / "sft", steps=2, batch_size=4, progress=False)
    texts = [("win a free prize now", 1), ("see you at lunch", 0)] * 20
    model, enc = load_model(pre["checkpoint"])
    clf = train_classifier((model, enc), texts, tmp_path / "clf", epochs=1, progress=False)
    for path, kind in ((pre["checkpoint"], "pretrain"), (sft["checkpoint"], "sft"), (clf["checkpoint"], "classifier")):
        ck = load_checkpoint(path)
        assert SCHEMA <= set(ck) and ck["kind"] == kind, (path, sorted(ck))
        GPTConfig(**ck["config"])  # the config is a whole GPTConfig
    with pytest.raises(CheckpointError, match="is a classifier"): load_model(clf["checkpoint"])


def test_latest_checkpoint_skips_a_damaged_newest_one(tmp_path, capsys):
    save_checkpoint(tmp_path / "ckpt_0000001.pt", {"model": {"w": torch.ones(2)}, "config": {}, "step": 1})
    (tmp_path / "ckpt_0000002.pt").write_bytes(b"PK\x03\x04 cut short")
    found = latest_checkpoint(tmp_path)
    assert found.path.name == "ckpt_0000001.pt" and found.ckpt["step"] == 1 and "skipping" in capsys.readouterr().err
    (tmp_path / "ckpt_0000001.pt").write_bytes(b"damaged too")
    assert latest_checkpoint(tmp_path) is None  # one kind of answer: a FoundCheckpoint, or None when none loads
    assert latest_checkpoint(tmp_path / "empty") is None
