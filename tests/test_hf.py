"""Appendix 13: notebook 05's fine-tuning run by Hugging Face's Trainer. The Trainer's per-step losses equal 05's
`finetune` (and stop equalling them when the alignment is undone), the result loads back into the course and is served,
the output folder is guarded, BLEU/ROUGE-L score texts, and `nanogpt-course sft --trainer hf` checks its flags first."""
import json, math

import httpx
import pytest
import torch

import nanogpt_course.hf as hf
from nanogpt_course.cli import main
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.serve import ServerThread, create_app, load_models
from nanogpt_course.sft import SFTDataset, builtin_instructions, finetune, generate_response, stratified_split
from nanogpt_course.tokenizer import get_tokenizer
from nanogpt_course.train import load_model

KW = dict(steps=10, batch_size=4, lr=1e-3, warmup_steps=2, min_lr_ratio=0.1, weight_decay=0.1, grad_clip=0.5, seed=3)


@pytest.fixture(scope="module")
def enc():
    return get_tokenizer("gpt2")  # a Hugging Face folder carries GPT-2's tokenizer: load_model gives it back


@pytest.fixture(scope="module")
def base(enc):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=96, vocab_size=enc.n_vocab, n_layer=2, n_head=2, n_embd=64)).eval()


@pytest.fixture(scope="module")
def records():
    return builtin_instructions()  # 32 records: 10 steps of 4 cross an epoch boundary (05 reshuffles there)


@pytest.fixture(scope="module")
def course_losses(base, enc, records, tmp_path_factory):
    s = finetune((base, enc), records, tmp_path_factory.mktemp("unused"), save=False, progress=False, **KW)
    return [l for _, l in s["train_losses"]]


def trainer_losses(base, enc, records, tmp_path):
    train, _ = stratified_split(records, 0.1, KW["seed"])
    return hf.hf_train(hf.to_transformers(base, tmp_path / "base"), SFTDataset(train, enc, base.config.block_size), enc, **KW)


def test_export_loads_in_transformers_and_back(base, tmp_path):
    m = hf.to_transformers(base, tmp_path / "base")
    x = torch.randint(0, base.config.vocab_size, (2, 40))
    with torch.no_grad():
        assert (m(x).logits - base(x)[0]).abs().max() < 1e-4
        m.save_pretrained(tmp_path / "again")  # transformers' writer, read by notebook 03's reader
        assert (GPT.from_pretrained(tmp_path / "again")(x)[0] - base(x)[0]).abs().max() < 1e-4


def test_trainer_losses_equal_finetune(base, enc, records, course_losses, tmp_path):
    n_train = len(stratified_split(records, 0.1, KW["seed"])[0])
    assert KW["steps"] * KW["batch_size"] > n_train  # the run crosses an epoch boundary
    losses = trainer_losses(base, enc, records, tmp_path)
    assert len(losses) == len(course_losses) == KW["steps"]
    assert max(abs(a - b) for a, b in zip(losses, course_losses)) < 1e-4, (losses, course_losses)


_collate, _order = hf.hf_collate, hf.course_order  # the originals, for the misaligned variants below


def _labels_only(batch, pad_id=50256):
    b = _collate(batch, pad_id); del b["shift_labels"]; return b  # 05's targets as plain labels: shifted twice


def _trainer_adamw(model, steps, lr, warmup_steps, min_lr_ratio=0.1, schedule="cosine", weight_decay=0.0, device_type="cpu"):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=weight_decay)  # the Trainer's betas
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: hf.sft_lr(s, steps, lr, warmup_steps, min_lr_ratio, schedule) / lr)


@pytest.mark.parametrize("name,value", [("hf_collate", _labels_only), ("course_optimizer", _trainer_adamw),
                                        ("course_order", lambda ex, steps, bs, seed, sw: _order(ex, steps, bs, seed + 1, sw))])
def test_parity_breaks_without_each_alignment(name, value, base, enc, records, course_losses, tmp_path, monkeypatch):
    monkeypatch.setattr(hf, name, value)
    losses = trainer_losses(base, enc, records, tmp_path)
    assert max(abs(a - b) for a, b in zip(losses, course_losses)) > 1e-3


def test_hf_finetune_round_trip_and_serve(base, enc, records, tmp_path):
    out = tmp_path / "sft-hf"
    s = hf.hf_finetune((base, enc), records, out, steps=3, batch_size=4, val_frac=0.0, progress=False)
    assert {"config.json", "model.safetensors", "summary.json"} <= {p.name for p in out.iterdir()}
    saved = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert saved["kind"] == "sft-hf" and saved["val_loss_before"] is None and len(saved["train_losses"]) == 3
    assert all(math.isfinite(l) for _, l in saved["train_losses"]) and s["checkpoint"] == str(out)
    model, enc2 = load_model(out)  # what `serve --checkpoint` and `chat` call
    assert isinstance(generate_response(model, enc2, "Name a colour.", max_new_tokens=5), str)
    models = load_models(str(out))
    assert list(models) == ["sft-hf"]
    with ServerThread(create_app(models)) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 5})
    assert r.status_code == 200 and isinstance(r.json()["choices"][0]["message"]["content"], str)


def test_output_folder_is_guarded_before_any_work(base, enc, records, tmp_path):
    (tmp_path / "run").mkdir(); (tmp_path / "run" / "ckpt_000010.pt").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="holds another run's files"):  # checked before the missing init is loaded
        hf.hf_finetune("no/such/model.pt", records, tmp_path / "run", steps=1, progress=False)
    (tmp_path / "mine").mkdir(); (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not empty"):
        hf.hf_finetune("no/such/model.pt", records, tmp_path / "mine", steps=1, overwrite=True, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    hf.hf_finetune((base, enc), records, tmp_path / "ok", steps=1, batch_size=2, progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        hf.hf_finetune((base, enc), records, tmp_path / "ok", steps=1, progress=False)
    hf.hf_finetune((base, enc), records, tmp_path / "ok", steps=1, batch_size=2, overwrite=True, progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        hf.hf_finetune("no/such/model.pt", records, tmp_path / "new", batch_size=0, progress=False)
    assert not (tmp_path / "new").exists()


def test_score_texts():
    same = hf.score_texts(["the cat sat on the mat", "a dog"], ["the cat sat on the mat", "a dog"])
    assert same["n"] == 2 and same["bleu"] == pytest.approx(100) and same["rougeL"] == pytest.approx(100)
    part = hf.score_texts(["the cat sat on a mat today"], ["the cat sat on the mat"])  # LCS 5 words of 7 and of 6
    assert part["rougeL"] == pytest.approx(100 * 2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6))
    assert 0 < part["bleu"] < 100
    assert hf.score_texts(["red green"], ["blue"]) == {"n": 1, "bleu": 0.0, "rougeL": 0.0}
    with pytest.raises(ValueError, match="2 answers but 1 references"): hf.score_texts(["a", "b"], ["a"])


def test_text_metrics_skips_prompts_that_do_not_fit(base, enc):
    recs = [{"instruction": "Say hi.", "context": "", "response": "hi"},
            {"instruction": "Summarise.", "context": "word " * 200, "response": "words"}]  # longer than block_size 96
    m = hf.text_metrics(base, enc, recs, max_new_tokens=3)
    assert m["n"] == 1 and m["skipped"] == 1


def test_cli_sft_trainer_hf(base, enc, tmp_path, capsys):
    init = tmp_path / "base"; base.save_pretrained(init)
    out = tmp_path / "out"
    assert main(["sft", "--trainer", "hf", "--init", str(init), "--data", "builtin", "--out", str(out), "--lr", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "nanogpt-course sft: error: --lr must be a number > 0, got -1.0"
    assert main(["sft", "--trainer", "hf", "--init", str(init), "--data", "builtin", "--out", str(out), "--sort-window", "0"]) == 2
    assert "--sort-window must be an integer >= 1" in capsys.readouterr().err  # the Trainer takes 05's batch order too
    assert not out.exists()
    assert main(["sft", "--trainer=hf", "--init", str(init), "--data", "builtin", "--out", str(out), "--steps", "2",
                 "--batch-size", "2", "--no-progress"]) == 0
    assert "with Hugging Face's Trainer" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert main(["sft", "--trainer", "hf", "--init", str(init), "--data", "builtin", "--out", str(out), "--steps", "2"]) == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert main(["sft", "--trainer", "hf", "--init", str(tmp_path / "missing.pt"), "--data", "builtin",
                 "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sft", "--help"])  # without --trainer: notebook 05's command, unchanged
    assert capsys.readouterr().out.startswith("usage: nanogpt-course sft [-h] --init")
