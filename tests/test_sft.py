"""Instruction fine-tuning (nanogpt_course.sft): loaders on files in the real schemas, prompt masking,
padding, LoRA merge, finetune's course checkpoint, and the `nanogpt-course sft` command line.

Self-contained: a tiny BPE tokenizer is trained inside the tests (no tiktoken cache, no network)."""
import json, os, subprocess, sys, warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.tokenizer import BPETokenizer, tokenizer_state
from nanogpt_course import sft
from nanogpt_course.train import load_checkpoint
from nanogpt_course.sft import (IGNORE_INDEX, SFTDataset, apply_lora, builtin_instructions, collate, count_parameters,
                                format_chat, format_prompt, load_alpaca, load_dolly, load_instructions, merge_lora,
                                stratified_split, tokenize_example, finetune, response_loss)
from nanogpt_course.checkpoint import load_model  # notebook 03b's loader reads every checkpoint finetune writes

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # the suite shares a small CPU with other processes; more threads only contend


@pytest.fixture(scope="module")
def enc():
    text = "\n".join(f"{r['instruction']} {r['context']} {r['response']}" for r in builtin_instructions()) * 3
    return BPETokenizer.train(text + "### Instruction: ### Input: ### Response:", 400).to_tiktoken()


def tiny_model(enc, seed=0, block_size=64):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=enc.n_vocab, n_layer=2, n_head=2, n_embd=32)).eval()


def write_base_checkpoint(path, enc, seed=0):
    """A course checkpoint in the BRIEF's format (what notebook 04 writes)."""
    import dataclasses
    m = tiny_model(enc, seed)
    torch.save({"model": m.state_dict(), "config": dataclasses.asdict(m.config), "tokenizer": tokenizer_state(enc),
                "kind": "pretrain", "step": 0}, path)
    return m


def dolly_rows():
    return [
        {"instruction": "Who wrote Hamlet?", "context": "", "response": "William Shakespeare.", "category": "open_qa"},
        {"instruction": "When was it built?", "context": "It was built in 1889.", "response": "1889.", "category": "closed_qa"},
        {"instruction": "   ", "context": "", "response": "x", "category": "open_qa"},
        {"instruction": "Summarize.", "context": "A long text.", "category": "summarization"},
        {"instruction": "Classify: cat", "context": "", "response": ["mammal"], "category": "classification"},
    ]


# ---------------------------------------------------------------------------------------------- loaders
def test_dolly_jsonl_skips_and_reports(tmp_path):
    lines = [json.dumps(r) for r in dolly_rows()]
    lines.insert(2, '{"instruction": "oops",')  # malformed: line 3
    lines.insert(4, "")                          # blank lines are ignored
    p = tmp_path / "databricks-dolly-15k.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        recs = load_dolly(p)
    assert [r["instruction"] for r in recs] == ["Who wrote Hamlet?", "When was it built?"]
    assert recs[1] == {"instruction": "When was it built?", "context": "It was built in 1889.", "response": "1889.",
                       "category": "closed_qa"}
    assert recs.report["skipped"] == {"empty_instruction": 1, "missing_response": 1, "bad_type_response": 1}
    assert len(recs.report["malformed"]) == 1 and recs.report["malformed"][0].startswith(f"{p.name}:3: malformed JSON (")
    assert any(":3:" in str(x.message) for x in w)
    with pytest.raises(ValueError, match=":3: malformed JSON"):
        load_dolly(p, strict=True)


def test_alpaca_json_and_jsonl_same_records(tmp_path):
    rows = [{"instruction": "Summarize the text.", "input": "Cats sleep a lot.", "output": "Cats sleep."},
            {"instruction": "Give three ideas for a party.", "input": "", "output": "Music, food, games."},
            {"instruction": "Say hi.", "output": ""},           # empty output
            {"instruction": "No input key.", "output": "fine"}]  # a missing input is an empty context
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    a, b = load_alpaca(tmp_path / "a.json"), load_alpaca(tmp_path / "a.jsonl")
    assert list(a) == list(b) and len(a) == 3
    assert a.report["skipped"] == {"empty_output": 1}
    assert a[0]["context"] == "Cats sleep a lot." and a[0]["category"] == "summarization"
    assert a[1]["category"] == "brainstorming" and a[2]["context"] == ""
    assert load_instructions(tmp_path / "a.json").report["schema"] == "alpaca"
    with pytest.raises(FileNotFoundError):
        load_alpaca(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('[{"instruction": 1,}')
    with pytest.raises(ValueError, match="not valid JSON at line 1"):
        load_alpaca(tmp_path / "bad.json")


def test_template_and_chat_share_one_format():
    assert format_prompt("Q?") == "### Instruction:\nQ?\n\n### Response:\n"
    assert format_prompt("Q?", "C.") == "### Instruction:\nQ?\n\n### Input:\nC.\n\n### Response:\n"
    assert format_chat([{"role": "user", "content": "Q?"}]) == format_prompt("Q?")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A?"},
            {"role": "assistant", "content": "B."}, {"role": "user", "content": "Q?"}]
    assert format_chat(msgs) == format_prompt("Q?", "System: Be brief.\nUser: A?\nAssistant: B.")
    for bad, msg in [([], "non-empty"), (msgs[:3], "last message must be the user's"),
                     ([{"role": "x", "content": "a"}], "role 'x'"), ([{"role": "user", "content": 3}], "must be a string")]:
        with pytest.raises(ValueError, match=msg):
            format_chat(bad)


# ---------------------------------------------------------------------------------------------- masking
def test_masking_counts_exactly_the_response(enc):
    rec = {"instruction": "What do bees make?", "context": "In the garden.", "response": "Bees make honey.", "category": "open_qa"}
    x, y, status = tokenize_example(rec, enc, block_size=64)
    prompt = enc.encode_ordinary(format_prompt(rec["instruction"], rec["context"]))
    response = enc.encode_ordinary("Bees make honey.") + [enc.eot_token]
    assert status == "ok" and len(x) == len(y) == len(prompt) + len(response) - 1
    assert x == (prompt + response)[:-1]
    counted = [i for i, t in enumerate(y) if t != IGNORE_INDEX]
    assert counted == list(range(len(prompt) - 1, len(y)))        # exactly the positions that predict the response
    assert [y[i] for i in counted] == response                     # ... and what they predict, EOT included
    model = tiny_model(enc)
    logits, loss = model(torch.tensor([x]), torch.tensor([y]))
    manual = F.cross_entropy(logits[0, counted], torch.tensor(response))
    assert torch.allclose(loss, manual, atol=1e-6)
    # the loss does not depend on the prompt's targets at all: changing them (still masked) changes nothing,
    y2 = list(y); y2[0] = IGNORE_INDEX
    assert torch.equal(model(torch.tensor([x]), torch.tensor([y2]))[1], loss)
    # while unmasking one prompt position does
    y3 = list(y); y3[0] = x[1]
    assert not torch.allclose(model(torch.tensor([x]), torch.tensor([y3]))[1], loss)


@pytest.mark.parametrize("pad_id", [None, 0, 7])
def test_padding_does_not_change_the_loss(enc, pad_id):
    ds = SFTDataset(builtin_instructions(), enc, block_size=64)
    model = tiny_model(enc, seed=1)
    lens = [len(ds[i][0]) for i in range(len(ds))]
    short, long_ = lens.index(min(lens)), lens.index(max(lens))
    assert lens[short] < lens[long_]
    batch = [ds[short], ds[long_], ds[3]]
    xb, yb = collate(batch, enc.eot_token if pad_id is None else pad_id)
    assert (yb[0, lens[short]:] == IGNORE_INDEX).all()
    logits_b, loss_b = model(xb, yb)
    total, count = 0.0, 0
    for i, (x, y) in enumerate(batch):
        logits, loss = model(torch.tensor([x]), torch.tensor([y]))
        assert torch.allclose(logits_b[i, :len(x)], logits[0], atol=1e-5)   # pads change no real position
        n = sum(t != IGNORE_INDEX for t in y)
        total, count = total + loss * n, count + n
    assert torch.allclose(loss_b, total / count, atol=1e-5)
    # the token-weighted validation loss is the same whatever the batch size
    assert abs(response_loss(model, ds, batch_size=1) - response_loss(model, ds, batch_size=7)) < 1e-5


def test_overlong_examples_truncated_or_dropped_and_counted(enc):
    recs = [{"instruction": "Q?", "context": "", "response": "word " * 200, "category": "x"},
            {"instruction": "long " * 200, "context": "", "response": "a", "category": "x"},
            {"instruction": "Q?", "context": "", "response": "short.", "category": "x"}]
    bs = len(enc.encode_ordinary(format_prompt("Q?") + "short.")) + 4  # the short example fits, the others do not
    t = SFTDataset(recs, enc, block_size=bs, overlong="truncate")
    d = SFTDataset(recs, enc, block_size=bs, overlong="drop")
    assert (t.report["truncated"], t.report["dropped"], len(t)) == (1, 1, 2)
    assert (d.report["truncated"], d.report["dropped"], len(d)) == (0, 2, 1)
    assert all(len(x) <= bs for x, _ in t) and max(len(x) for x, _ in t) == bs
    with pytest.raises(ValueError, match="overlong"):
        tokenize_example(recs[0], enc, 32, overlong="cut")


def test_stratified_split_keeps_every_category():
    recs = [{"instruction": f"q{i}", "context": "", "response": "r", "category": c}
            for i, c in enumerate(["a"] * 50 + ["b"] * 10 + ["c"] * 2 + ["d"])]
    train, val = stratified_split(recs, 0.1, seed=3)
    cats = lambda rs, c: sum(r["category"] == c for r in rs)
    assert (cats(val, "a"), cats(val, "b"), cats(val, "c"), cats(val, "d")) == (5, 1, 1, 0)
    assert len(train) + len(val) == len(recs)
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in val}
    assert stratified_split(recs, 0.1, seed=3) == (train, val)


# ---------------------------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("targets", [("c_attn",), ("c_attn", "c_proj", "c_fc")])
def test_lora_trains_only_adapters_and_merges_exactly(enc, targets, capsys):
    base = tiny_model(enc, seed=2)
    ref = {k: v.clone() for k, v in base.state_dict().items()}
    m = apply_lora(base, r=4, alpha=8, targets=targets)
    assert "trainable" in capsys.readouterr().out
    trainable, total = count_parameters(m)
    n_lora = sum(p.numel() for n, p in m.named_parameters() if "lora_" in n)
    assert trainable == n_lora and 0 < trainable < total
    ds = SFTDataset(builtin_instructions()[:8], enc, block_size=64)
    xb, yb = collate([ds[i] for i in range(8)], enc.eot_token)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m.train()
    for _ in range(5):
        loss = m(xb, yb)[1]; opt.zero_grad(); loss.backward(); opt.step()
    m.eval()
    for k, v in ref.items():  # the frozen base weights did not move
        key = k if k in m.state_dict() else k.replace(".weight", ".base.weight").replace(".bias", ".base.bias")
        assert torch.equal(m.state_dict()[key], v), k
    with torch.no_grad():
        adapted = m(xb)[0]
        moved = (adapted - tiny_model(enc, seed=2)(xb)[0]).abs().max()
        merged = merge_lora(m)(xb)[0]
    assert moved > 1e-3                                  # the adapters did learn something
    assert torch.allclose(merged, adapted, atol=1e-4)    # and merging keeps it exactly
    assert set(m.state_dict()) == set(ref)               # a plain GPT again


# ---------------------------------------------------------------------------------------------- finetune + CLI
def test_finetune_writes_a_course_checkpoint(enc, tmp_path):
    write_base_checkpoint(tmp_path / "base.pt", enc)
    s = finetune(str(tmp_path / "base.pt"), "builtin", tmp_path / "run", steps=12, batch_size=4, lr=3e-3,
                 eval_every=4, progress=False)
    assert s["val_loss_after"] < s["val_loss_before"]
    assert s["counts"]["train_records"] + s["counts"]["val_records"] == 32
    assert set(s["counts"]["val_categories"]) == set(s["counts"]["train_categories"])  # stratified: all 8 in both
    assert [v[0] for v in s["val_losses"]] == [0, 4, 8, 12] and len(s["train_losses"]) == 12
    ck = load_checkpoint(s["checkpoint"])
    assert ck["kind"] == "sft" and ck["step"] == 12 and set(ck) >= {"model", "config", "tokenizer", "kind", "step"}
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ck["model"])
    json.loads((tmp_path / "run" / "summary.json").read_text())  # the summary is JSON
    model, enc2 = load_model(s["checkpoint"])
    assert enc2.encode_ordinary(format_prompt("Hi")) == enc.encode_ordinary(format_prompt("Hi"))
    # the saved weights are the fine-tuned ones: their validation loss is the one finetune reported
    _, val = stratified_split(builtin_instructions(), 0.1, 0)
    assert abs(response_loss(model, SFTDataset(val, enc2, 64)) - s["val_loss_after"]) < 1e-4
    m2, _ = load_model(s["checkpoint"])  # what serving, the playground and evaluation call
    x = torch.tensor([enc.encode_ordinary(format_prompt("Hi"))])
    assert torch.allclose(m2(x)[0], model(x)[0])


def test_finetune_with_lora_saves_merged_weights(enc, tmp_path):
    base = tiny_model(enc)
    s = finetune((base, enc), "builtin", tmp_path, steps=6, batch_size=4, lr=1e-2, lora_r=2,
                 lora_targets=("c_attn", "c_fc"), progress=False)
    ck = load_checkpoint(s["checkpoint"])
    assert not any("lora_" in k for k in ck["model"]) and ck["lora"]["r"] == 2
    assert s["trainable_params"] < s["total_params"] / 5
    assert any("lora_B" in k for k in ck["lora"]["adapters"])
    merged, _ = load_model(s["checkpoint"])
    assert not torch.equal(merged.state_dict()["transformer.h.0.attn.c_attn.weight"],
                           base.state_dict()["transformer.h.0.attn.c_attn.weight"])
    assert torch.equal(merged.state_dict()["transformer.wte.weight"], base.state_dict()["transformer.wte.weight"])


def run_cli(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    code = "import sys; from nanogpt_course.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "sft", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=170)


def test_cli_end_to_end_and_errors(enc, tmp_path):
    write_base_checkpoint(tmp_path / "base.pt", enc)
    rows = [{"instruction": r["instruction"], "context": r["context"], "response": r["response"],
             "category": r["category"]} for r in builtin_instructions()]
    (tmp_path / "dolly.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    alp = [{"instruction": "Say yes.", "input": "", "output": "Yes."}, {"instruction": "Say no.", "input": "", "output": "No."}]
    (tmp_path / "alpaca.json").write_text(json.dumps(alp))
    r = run_cli(["--init", "base.pt", "--data", "dolly.jsonl", "--data", "alpaca.json", "--out", "out", "--steps", "4",
                 "--batch-size", "4", "--lr", "1e-3", "--lora-r", "2", "--lora-targets", "c_attn,c_proj", "--no-progress"],
                tmp_path)
    assert r.returncode == 0, r.stderr
    assert "val loss on response tokens" in r.stdout and "dolly.jsonl:33: malformed JSON" in r.stderr
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["counts"]["records"] == 34 and s["steps"] == 4 and s["lora"]["targets"] == ["c_attn", "c_proj"]
    assert load_checkpoint(tmp_path / "out" / "sft.pt")["kind"] == "sft"
    r = run_cli(["--init", "base.pt", "--data", "nothere.jsonl", "--out", "out2"], tmp_path)
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(["--init", "base.pt", "--data", "builtin", "--out", "out3", "--lora-r", "2", "--lora-targets", "q_proj",
                 "--steps", "1"], tmp_path)
    assert r.returncode == 2 and "no linear layer matches" in r.stderr


def test_finetune_from_a_hugging_face_gpt2_directory(tmp_path):
    """GPT-2 weights in transformers' format (here a tiny random GPT2LMHeadModel) are a valid starting point."""
    transformers = pytest.importorskip("transformers")
    import tiktoken
    try:
        gpt2 = tiktoken.get_encoding("gpt2")
    except Exception:
        pytest.skip("the GPT-2 encoding is not available offline (set TIKTOKEN_CACHE_DIR)")
    cfg = transformers.GPT2Config(vocab_size=gpt2.n_vocab, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "hf")
    s = finetune(str(tmp_path / "hf"), "builtin", tmp_path / "run", steps=3, batch_size=2, lr=1e-3, eval_batches=1,
                 progress=False)
    ck = load_checkpoint(s["checkpoint"])
    assert ck["kind"] == "sft" and ck["tokenizer"] == {"format": "tiktoken", "name": "gpt2"} and ck["config"]["block_size"] == 64
    assert s["counts"]["train"]["examples"] > 0


def test_generate_response_refuses_a_prompt_that_fills_the_context(enc):
    model = tiny_model(enc, block_size=32)
    with pytest.raises(ValueError, match="block_size is 32"):
        sft.generate_response(model, enc, "word " * 40)
    out = sft.generate_response(model, enc, "Q?", max_new_tokens=3)
    ids = enc.encode_ordinary(sft.format_prompt("Q?"))
    new = model.generate(torch.tensor([ids]), 3, temperature=0, eos_token_id=enc.eot_token)[0, len(ids):].tolist()
    want = enc.decode(new[:new.index(enc.eot_token)] if enc.eot_token in new else new).strip()  # greedy, cut at eot, trimmed
    assert out == want
    a = sft.respond(model, enc, "Q?", max_new_tokens=3)
    assert a == sft.Answer(want, enc.eot_token in new)


def test_answer_table_uses_generate_response(enc, capsys):
    "Each model's greedy answer and stop flag come from respond; a prompt that fills the context is a row, not a crash."
    model = tiny_model(enc, block_size=32)
    recs = [{"category": "open_qa", "instruction": "Q?", "context": "", "response": "A."},
            {"category": "summarization", "instruction": "word " * 40, "context": "", "response": "short"}]
    rows = sft.answer_table({"m": (model, enc)}, recs, max_new_tokens=3)
    a = sft.respond(model, enc, "Q?", max_new_tokens=3)
    assert (rows[0]["m"], rows[0]["m_stop"]) == (a.text, a.stopped)
    assert rows[1]["m"] == "(prompt too long)" and rows[1]["m_stop"] is False
    assert "[summarization]" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- bad input (issue 11)
BAD_FLAGS = [("--steps", "0"), ("--steps", "-3"), ("--batch-size", "0"), ("--batch-size", "-1"), ("--lora-r", "-1"),
             ("--epochs", "0"), ("--lr", "0"), ("--lr", "nan"), ("--warmup-steps", "-5"), ("--min-lr-ratio", "5"),
             ("--weight-decay", "-0.1"), ("--grad-clip", "-1"), ("--val-frac", "1"), ("--eval-every", "0"),
             ("--eval-every", "-1"), ("--eval-batches", "0"), ("--lora-alpha", "0"), ("--lora-dropout", "1"),
             ("--max-seconds", "0"), ("--max-seconds", "inf"), ("--seed", "-1"), ("--dtype", "fp8"),
             ("--sort-window", "0")]


@pytest.mark.parametrize("flag,value", BAD_FLAGS)
def test_cli_checks_every_number_before_any_work(flag, value, tmp_path, capsys):
    "The flag is named with its allowed range; nothing is loaded first (the model and data do not even exist) and --out is not made."
    rc = sft.cli(["--init", str(tmp_path / "no-model.pt"), "--data", str(tmp_path / "no-data.jsonl"),
                  "--out", str(tmp_path / "out"), flag, value, "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"nanogpt-course sft: error: {flag} must be "), err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("kw,name", [(dict(steps=0), "steps must be an integer >= 1"),
                                     (dict(batch_size=-1), "batch_size must be an integer >= 1"),
                                     (dict(lora_r=-1), "lora_r must be an integer >= 0"),
                                     (dict(steps=2.5), "steps must be an integer"),
                                     (dict(lr=float("inf")), "lr must be a number > 0"),
                                     (dict(schedule="step"), "schedule must be"),
                                     (dict(sort_window=0), "sort_window must be an integer >= 1"),
                                     (dict(lora_r=2, lora_targets=()), "lora_targets is empty")])
def test_finetune_checks_its_arguments_before_loading(kw, name, tmp_path):
    with pytest.raises(ValueError, match=name):
        finetune(str(tmp_path / "no-model.pt"), str(tmp_path / "no-data.jsonl"), tmp_path / "out", progress=False, **kw)
    assert not (tmp_path / "out").exists()


def test_device_that_is_not_there_is_a_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, even on a GPU machine
    # the words are notebook 03c's `check_device`, which every command uses: the flag, the device, and what to use instead
    for dev, want, fix in [("cuda", "--device cuda: this PyTorch sees no CUDA GPU", "use --device cpu"),
                           ("cuda:1", "--device cuda:1: this PyTorch sees no CUDA GPU", "use --device cpu"),
                           ("tpu", "--device must be auto, cpu, cuda (or cuda:N) or mps, got 'tpu'", "must be auto, cpu"),
                           ("cuda0", "--device must be auto, cpu, cuda (or cuda:N) or mps, got 'cuda0'", "must be auto, cpu")]:
        rc = sft.cli(["--init", str(tmp_path / "no-model.pt"), "--data", "builtin", "--out", str(tmp_path / "out"),
                      "--device", dev, "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and want in err and fix in err and "Traceback" not in err and err.count("\n") == 1, err
    with pytest.raises(ValueError, match=r"^device must be auto, cpu, cuda \(or cuda:N\) or mps, got 'tpu'"):  # Python: the argument's name
        finetune(str(tmp_path / "no-model.pt"), "builtin", tmp_path / "out", device="tpu", progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        finetune(str(tmp_path / "no-model.pt"), "builtin", tmp_path / "out", device="cuda:2", progress=False)
    assert not (tmp_path / "out").exists()


def test_out_never_replaces_a_run_without_overwrite(enc, tmp_path, capsys):
    quick = dict(steps=1, batch_size=2, eval_batches=1, progress=False)
    base = tiny_model(enc)
    s = finetune((base, enc), "builtin", tmp_path / "sft", **quick)
    before = (tmp_path / "sft" / "sft.pt").read_bytes()
    with pytest.raises(FileExistsError, match=r"already holds a fine-tuning run \(sft.pt, sft_log.jsonl, summary.json\).*overwrite=True"):
        finetune((base, enc), "builtin", tmp_path / "sft", seed=1, **quick)
    assert (tmp_path / "sft" / "sft.pt").read_bytes() == before
    s2 = finetune((base, enc), "builtin", tmp_path / "sft", seed=1, overwrite=True, **quick)  # asked for: replaced
    assert s2["checkpoint"] == s["checkpoint"] and (tmp_path / "sft" / "sft.pt").read_bytes() != before
    assert json.loads((tmp_path / "sft" / "summary.json").read_text())["kind"] == "sft"
    # a pretraining run's folder: refused even with --overwrite, and its files are untouched
    run = tmp_path / "pretrain"; run.mkdir()
    write_base_checkpoint(run / "ckpt_0000010.pt", enc)
    (run / "log.jsonl").write_text('{"step": 10, "loss": 3.0}\n')
    (run / "summary.json").write_text(json.dumps({"steps": 10, "val_loss": 3.1}))
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    for extra in ([], ["--overwrite"]):
        rc = sft.cli(["--init", str(run), "--data", "builtin", "--out", str(run), "--steps", "1", "--no-progress", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and f"--out {run} holds another run's files (ckpt_0000010.pt, log.jsonl, summary.json)" in err, err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files
    # a folder holding only someone else's summary.json (the main job's run folder) is not ours either
    main = tmp_path / "main"; main.mkdir(); (main / "summary.json").write_text(json.dumps({"stages": {}}))
    with pytest.raises(FileExistsError, match="holds another run's files \\(summary.json\\)"):
        finetune((base, enc), "builtin", main, overwrite=True, **quick)
    rc = sft.cli(["--init", str(run), "--data", "builtin", "--out", str(run / "log.jsonl"), "--no-progress"])
    assert rc == 2 and "is a file, not a folder" in capsys.readouterr().err
    rc = sft.cli(["--init", str(run), "--data", "builtin", "--out", str(tmp_path / "sft"), "--steps", "1", "--no-progress"])
    assert rc == 2 and "pass --overwrite to replace it" in capsys.readouterr().err


def test_instruction_schema_is_decided_per_record(enc, tmp_path, capsys):
    "A first record without `output` does not make 40 good Alpaca records unusable; skips are counted and printed."
    good = [{"instruction": f"Say the number {i}.", "input": "", "output": f"{i}."} for i in range(40)]
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "Broken.", "input": ""}] + good))
    recs = load_instructions(tmp_path / "a.json")
    assert len(recs) == 40 and recs.report["skipped"] == {"missing_output": 1} and recs.report["schema"] == "alpaca"
    mixed = [dolly_rows()[0], good[0], dolly_rows()[3]]  # Dolly, Alpaca, Dolly without a response
    (tmp_path / "mixed.jsonl").write_text("\n".join(json.dumps(r) for r in mixed))
    m = load_instructions(tmp_path / "mixed.jsonl")
    assert [r["response"] for r in m] == ["William Shakespeare.", "0."] and m.report["skipped"] == {"missing_response": 1}
    assert m.report["schema"] == "alpaca+dolly"
    write_base_checkpoint(tmp_path / "base.pt", enc)
    rc = sft.cli(["--init", str(tmp_path / "base.pt"), "--data", str(tmp_path / "a.json"), "--out", str(tmp_path / "out"),
                  "--steps", "1", "--batch-size", "2", "--eval-batches", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and f"{tmp_path / 'a.json'} (alpaca): 40 records kept, 1 skipped (missing_output: 1)" in out, out
    (tmp_path / "none.json").write_text(json.dumps([{"instruction": "x"}] * 3))
    rc = sft.cli(["--init", str(tmp_path / "base.pt"), "--data", str(tmp_path / "none.json"), "--out", str(tmp_path / "o2")])
    assert rc == 2 and "0 records kept, 3 skipped (missing_response: 3)" in capsys.readouterr().err


def test_dolly_offline_is_one_sentence_naming_the_file(tmp_path, capsys, monkeypatch):
    import nanogpt_course.data as D
    datasets = pytest.importorskip("datasets")
    def unreachable(*a, **k): raise ConnectionError("Couldn't reach 'databricks/databricks-dolly-15k' on the Hub")
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.delenv("NANOGPT_COURSE_DATA", raising=False)
    for reachable in (False, True):  # offline, or the hub answers a ping but the download fails
        monkeypatch.setattr(D, "hub_reachable", lambda *a, **k: reachable)
        with pytest.raises(RuntimeError) as e:
            load_dolly()
        msg = str(e.value)
        assert "download databricks-dolly-15k.jsonl from https://huggingface.co/datasets/databricks/databricks-dolly-15k" in msg
        assert "--data FILE" in msg and e.value.__cause__ is None  # no chained ConnectionError traceback either:
        assert e.value.__context__ is None or e.value.__suppress_context__
        rc = sft.cli(["--init", str(tmp_path / "no-model.pt"), "--data", "dolly", "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "databricks-dolly-15k.jsonl" in err and "Traceback" not in err, err
    # the file, once downloaded, is found where the message says
    monkeypatch.setenv("NANOGPT_COURSE_DATA", str(tmp_path))
    (tmp_path / "databricks-dolly-15k.jsonl").write_text("\n".join(json.dumps(r) for r in dolly_rows()))
    assert len(sft.instruction_data("dolly")) == 2 and len(sft.instruction_data("auto")) == 2


def test_generate_response_never_picks_a_padding_id():
    "GPT-2's tokenizer (50,257 ids) with the padded 50,304-row vocabulary: padding rows made the most likely still decode."
    import tiktoken
    gpt2 = tiktoken.get_encoding("gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=50304, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():  # every position's final state is all ones, and the padding rows point along it
        model.transformer.ln_f.weight.zero_(); model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[gpt2.n_vocab:] = 1.0
    ids = gpt2.encode_ordinary(format_prompt("Q?"))
    assert model.generate(torch.tensor([ids]), 1, temperature=0)[0, -1] >= gpt2.n_vocab  # unguarded, a padding id wins
    assert isinstance(sft.respond(model, gpt2, "Q?", max_new_tokens=4).text, str)
    assert isinstance(sft.generate_response(model, gpt2, "Q?", max_new_tokens=4, temperature=1.0, seed=0), str)


def test_no_validation_set_writes_no_nan(enc, tmp_path):
    "val_frac=0 leaves no validation loss: the summary and the log say null, never NaN (which is not JSON)."
    s = finetune((tiny_model(enc), enc), "builtin", tmp_path / "run", steps=2, batch_size=2, val_frac=0.0, progress=False)
    def strict(text): return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} written into JSON"))
    summary = strict((tmp_path / "run" / "summary.json").read_text())
    assert summary["val_loss_before"] is None and summary["val_loss_after"] is None and s["counts"]["val_records"] == 0
    assert [strict(line) for line in (tmp_path / "run" / "sft_log.jsonl").read_text().splitlines()][0]["val_loss"] is None


# --- skills a small model can learn, scored exactly (issue 14) ---

def _lines_text(n=400, seed=0):
    import random
    rnd = random.Random(seed)
    words = "the cat sat on a mat while some dog ran to its home and every bird sang in morning light".split()
    return "\n".join(" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 8))).capitalize() + rnd.choice(".,;!?")
                     for _ in range(n))


def test_skill_tasks_hold_out_lines_no_training_item_uses():
    text = _lines_text()
    train, held = sft.skill_tasks(text, n_train=50, n_heldout=10, seed=3)
    assert len(train) == 50 * len(sft.SKILLS) and len(held) == 10 * len(sft.SKILLS)
    assert not {r["context"] for r in train} & {r["context"] for r in held}  # disjoint lines, whatever the family
    assert len({r["context"] for r in held}) == len(held)  # every held-out item has a line of its own
    assert {r["category"] for r in held} == {f"skill_{f}" for f in sft.SKILLS}
    assert (train, held) == sft.skill_tasks(text, n_train=50, n_heldout=10, seed=3)  # the seed decides everything
    assert held != sft.skill_tasks(text, n_train=50, n_heldout=10, seed=4)[1]
    for r in held:  # each answer follows from its line
        w = sft.line_words(r["context"])
        end = {"?": "question mark", "!": "exclamation mark", ".": "full stop", ",": "comma"}.get(r["context"][-1], "none")
        want = {"skill_first_word": w[0], "skill_ending": end,
                "skill_question": "yes" if r["context"].endswith("?") else "no"}[r["category"]]
        assert r["response"] == want
    answers = [r["response"] for r in held if r["category"] == "skill_question"]
    assert answers.count("yes") == answers.count("no") == 5  # balanced: always "no" scores 50%, not 80%
    ends = Counter(r["response"] for r in held if r["category"] == "skill_ending")
    assert ends == Counter({"question mark": 2, "exclamation mark": 2, "full stop": 2, "comma": 2, "none": 2})
    assert sft.line_words("'Tis but his policy to counterfeit,") == ["Tis", "but", "his", "policy", "to", "counterfeit"]
    with pytest.raises(ValueError, match="usable lines"):
        sft.skill_tasks(text, n_train=1000, n_heldout=10)
    with pytest.raises(ValueError, match="unknown skill families"):
        sft.skill_tasks(text, families=("spelling",))


def test_exact_match_and_skill_scores(enc, monkeypatch):
    assert sft.exact_match(" O  /  good\n", "O / good") and not sft.exact_match("O/good", "O / good")
    assert not sft.exact_match("good.", "good") and not sft.exact_match("", "good")
    _, held = sft.skill_tasks(_lines_text(), n_train=10, n_heldout=4)
    # a model that is right on `first_word` and `question` only, and stops on `ending` only
    def fake(model, enc, instruction, context, max_new_tokens, **kw):
        right = next(r["response"] for r in held if r["instruction"] == instruction and r["context"] == context)
        fam = next(f for f, (ins, _) in sft.SKILLS.items() if ins == instruction)
        return sft.Answer((right if fam in ("first_word", "question") else "wrong"), fam == "ending")
    monkeypatch.setattr(sft, "respond", fake)
    s = sft.skill_scores(None, enc, held)
    assert {f: v["accuracy"] for f, v in s.items()} == {"first_word": 1.0, "ending": 0.0, "question": 1.0, "mean": 0.6667}
    assert s["mean"]["stop_rate"] == 0.3333 and s["mean"]["n"] == 12 and s["ending"]["n"] == 4


def test_finetune_in_bf16_on_the_cpu_and_dtype_checked(enc, tmp_path):
    recs = builtin_instructions()
    s = finetune((tiny_model(enc), enc), recs, tmp_path / "bf16", steps=2, batch_size=4, lr=1e-3, dtype="bfloat16", progress=False)
    assert s["steps"] == 2 and s["args"]["dtype"] == "bfloat16" and all(map(lambda v: v == v, (l for _, l in s["train_losses"])))
    with pytest.raises(ValueError, match="dtype must be 'auto', 'float32' or 'bfloat16', got 'fp8'"):
        finetune(str(tmp_path / "no-model.pt"), str(tmp_path / "no-data.jsonl"), tmp_path / "out", dtype="fp8", progress=False)


# --- one training step, one schedule, one runtime, one config (issue 12) ---

def test_finetune_steps_with_pretrainings_train_step_and_schedule(enc, monkeypatch):
    "Every optimizer step is notebook 04b's train_step at sft_lr's rate, and sft_lr's cosine is 04b's get_lr."
    from nanogpt_course import train as T
    calls = []
    def spy(model, optimizer, next_batch, accum=1, lr=1e-3, grad_clip=1.0, autocast=None):
        calls.append((accum, lr, grad_clip))
        return T.train_step(model, optimizer, next_batch, accum, lr, grad_clip, autocast)
    monkeypatch.setattr(sft, "train_step", spy)
    s = finetune((tiny_model(enc), enc), "builtin", "unused", steps=5, batch_size=4, lr=2e-3, grad_clip=0.5, save=False, progress=False)
    assert s["steps"] == 5 and len(s["train_losses"]) == 5
    assert calls == [(1, sft.sft_lr(i, 5, 2e-3, 1), 0.5) for i in range(5)]
    for step in (0, 3, 10, 57, 99, 100, 150):  # warmup, the cosine, its end and past it
        cfg = T.make_config(None, lr=3e-4, warmup_steps=10, max_steps=100, min_lr_ratio=0.2)
        assert sft.sft_lr(step, 100, 3e-4, 10, 0.2) == T.get_lr(step, cfg)
    monkeypatch.setattr(sft, "get_lr", lambda step, cfg: 42.0)  # the cosine lives in 04b: change it there, SFT follows
    assert sft.sft_lr(50, 100, 3e-4, 10) == 42.0 and sft.sft_lr(50, 100, 3e-4, 10, schedule="linear") != 42.0


def test_finetune_autocasts_with_the_runtime_policy(enc, monkeypatch):
    "The forward passes run in notebook 03c's autocast_for(device, dtype), the one home of the precision policy."
    seen = []
    real = sft.autocast_for
    monkeypatch.setattr(sft, "autocast_for", lambda device, dtype="auto": seen.append((str(device), dtype)) or real(device, dtype))
    finetune((tiny_model(enc), enc), "builtin", "unused", steps=1, batch_size=2, dtype="bfloat16", save=False, progress=False)
    assert seen == [("cpu", "bfloat16")]


def test_sft_config_holds_finetunes_settings_and_is_recorded(enc, tmp_path):
    "SFTConfig has finetune's settings with the same defaults; the checkpoint and summary record them as args."
    import dataclasses, inspect
    params = inspect.signature(finetune).parameters
    fields = {f.name: f.default for f in dataclasses.fields(sft.SFTConfig)}
    assert fields == {k: params[k].default for k in fields}
    s = finetune((tiny_model(enc), enc), "builtin", tmp_path / "run", steps=2, batch_size=2, lora_r=2, progress=False)
    ck = load_checkpoint(s["checkpoint"])
    assert ck["sft"]["args"] == s["args"] and set(s["args"]) >= set(fields)
    assert s["args"]["steps"] == 2 and s["args"]["lora_targets"] == ["c_attn"] and s["args"]["init"] == "<in-memory model>"
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["args"]["lora_r"] == 2


def test_finetune_takes_device_auto(enc):
    "--device auto, as every other command takes it (notebook 03c's pick_device): CUDA, else MPS, else the CPU."
    s = finetune((tiny_model(enc), enc), "builtin", "unused", steps=1, batch_size=2, device="auto", save=False, progress=False)
    assert s["steps"] == 1 and s["args"]["device"] == "auto"
