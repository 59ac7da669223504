"""Classification fine-tuning (nanogpt_course.classify, notebook 12): the SMS file reader and its errors, the download,
balancing and the split, the last-token classifier, the trainable modes, the metrics, train_classifier's files and
checkpoint, and the `nanogpt-course classify` command line (its `cli` function).

Self-contained: the messages are written here and a tiny BPE tokenizer is trained inside the tests (no data folder,
no tiktoken cache, no network)."""
import dataclasses, json, math, re, types, zipfile
from pathlib import Path

import pytest
import torch

from nanogpt_course import classify
from nanogpt_course.classify import (LABELS, SMS_FILE, SMS_URL, GPTClassifier, balance, binary_metrics, check_classify_args,
                                     class_logits, cli, download_sms, evaluate, load_classifier, load_sms, pad_batch, predict,
                                     read_sms, set_trainable, split_sms, train_classifier)
from nanogpt_course.data import DataUnavailable
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.sft import LoRALinear
from nanogpt_course.tokenizer import BPETokenizer, tokenizer_state
from nanogpt_course.train import CheckpointError, load_checkpoint, save_checkpoint

torch.set_num_threads(1)  # the suite shares a small CPU with other processes; more threads only contend

HAM = ["Ok see you at 7", "Are you coming home for dinner?", "Sorry, I'll call later", "Haha that's so funny",
       "Can you pick up some milk", "Meeting moved to 3pm", "Good night, sleep well", "I'm on the bus now",
       "Did you finish the homework?", "Love you, talk tomorrow", "Where are my keys", "The film starts at 8"]
SPAM = ["WINNER! You have won a 1000 prize. Call 09061701461 now", "FREE entry to WIN a new phone! Text WIN to 80086",
        "URGENT! Your number has WON 2000. Claim on 08001234567", "Congratulations! Claim your FREE holiday, text YES to 85233",
        "You are selected for a CASH award. Call 09050000327", "WIN 500 shopping vouchers today! Txt WIN to 69696",
        "FREE ringtone! Text TONE to 87121 now", "Claim your PRIZE! Call 09061213237 before midnight"]


def sms_lines(n_ham=12, n_spam=8) -> str:
    return "".join(f"ham\t{HAM[i % len(HAM)]} {i}\r\n" for i in range(n_ham)) + \
           "".join(f"spam\t{SPAM[i % len(SPAM)]} {i}\r\n" for i in range(n_spam))


@pytest.fixture(scope="module")
def enc():
    return BPETokenizer.train(" ".join(HAM + SPAM) * 3, 300).to_tiktoken()


def tiny_gpt(enc, seed=0, block_size=64):
    torch.manual_seed(seed)
    return GPT(GPTConfig(block_size=block_size, vocab_size=enc.n_vocab, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.fixture
def base_ckpt(tmp_path, enc):
    "A course checkpoint of a tiny GPT, as notebook 04 writes one."
    m = tiny_gpt(enc)
    return save_checkpoint(tmp_path / "base.pt", dict(model=m.state_dict(), config=dataclasses.asdict(m.config),
                                                      tokenizer=tokenizer_state(enc), kind="pretrain", step=0))


@pytest.fixture
def sms_file(tmp_path):
    p = tmp_path / SMS_FILE
    p.write_text(sms_lines(30, 30), newline="")
    return p


# ---------------------------------------------------------------------------------------------- the file
def test_read_sms_crlf_and_blank_lines(tmp_path):
    p = tmp_path / "s.txt"
    p.write_bytes(b"ham\tOk lar...\r\nspam\tWIN now\tor never\r\n\r\n")
    assert read_sms(p) == [("Ok lar...", 0), ("WIN now\tor never", 1)]  # only the first tab separates


@pytest.mark.parametrize("content, msg", [
    (b"ham\tfine\nspam no tab\n", "line 2: no tab"),
    (b"ham\tfine\nSpam\tx\n", "line 2: the label is 'Spam'; it must be ham or spam"),
    (b"junk\tx\n", "line 1: the label is 'junk'"),
    (b"ham\tok\nham\t \n", "line 2: the message after the tab is empty"),
    (b"ham\tok\nham\t\xff\xfe\n", "line 2: not UTF-8 (byte 0xff at column 5)"),
    (b"", "holds no messages"),
])
def test_read_sms_bad_files_name_file_and_line(tmp_path, content, msg):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(ValueError) as e: read_sms(p)
    assert msg in str(e.value) and str(p) in str(e.value)


def test_read_sms_missing_file_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("does not exist; download " + SMS_URL)): read_sms(tmp_path / "no")
    with pytest.raises(FileNotFoundError, match="is a folder"): read_sms(tmp_path)


def test_download_from_a_zip_then_from_the_cache(tmp_path):
    z = tmp_path / "sms.zip"
    with zipfile.ZipFile(z, "w") as f: f.writestr(SMS_FILE, sms_lines(3, 2)); f.writestr("readme", "x")
    got = download_sms(tmp_path / "cache", url=z.resolve().as_uri())
    assert got == tmp_path / "cache" / SMS_FILE and len(read_sms(got)) == 5
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [SMS_FILE]  # no temporary file left beside it
    assert download_sms(tmp_path / "cache", url="http://127.0.0.1:9/x.zip") == got  # cached: the URL is never fetched


def test_download_offline_is_one_sentence(tmp_path):
    with pytest.raises(DataUnavailable) as e: download_sms(tmp_path / "c", url="http://127.0.0.1:9/sms.zip")
    msg = str(e.value)
    assert msg.count(". ") == 0 and msg.endswith(".")
    assert SMS_URL in msg and "$NANOGPT_COURSE_DATA" in msg and "--data FILE" in msg
    assert not (tmp_path / "c" / SMS_FILE).exists()


def test_download_of_a_zip_without_the_file(tmp_path):
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as f: f.writestr("something_else.txt", "x")
    with pytest.raises(ValueError, match="holds no SMSSpamCollection"): download_sms(tmp_path / "c", url=z.resolve().as_uri())


def test_load_sms_prefers_the_course_data_folder(tmp_path, monkeypatch, sms_file):
    monkeypatch.setenv("NANOGPT_COURSE_DATA", str(sms_file.parent))
    monkeypatch.setattr(classify, "download_sms", lambda *a, **k: pytest.fail("must not download when the file is there"))
    assert len(load_sms()) == 60
    assert load_sms(sms_file) == load_sms()


# ---------------------------------------------------------------------------------------------- balance and split
def test_balance_and_split():
    recs = read_sms_text(sms_lines(100, 20))
    b = balance(recs, seed=1)
    assert sum(l == 0 for _, l in b) == sum(l == 1 for _, l in b) == 20
    assert set(b) <= set(recs) and {r for r in recs if r[1] == 1} <= set(b)  # every spam kept, ham undersampled
    tr, va, te = split_sms(b, seed=1)
    assert (len(tr), len(va), len(te)) == (28, 4, 8)
    for part in (tr, va, te): assert sum(l for _, l in part) * 2 == len(part)  # each split balanced too
    assert sorted(tr + va + te) == sorted(b)
    assert split_sms(b, seed=1) == (tr, va, te) and split_sms(b, seed=2) != (tr, va, te)
    with pytest.raises(ValueError, match="too few to split"): split_sms(b[:3])


def read_sms_text(text):
    return [(t, LABELS.index(l)) for l, t in (line.split("\t", 1) for line in text.splitlines())]


# ---------------------------------------------------------------------------------------------- the model
def test_last_real_token_decides_and_pads_do_not_matter(enc):
    clf = GPTClassifier.from_gpt(tiny_gpt(enc)).eval()
    a, b = enc.encode_ordinary("see you at 7"), enc.encode_ordinary("WIN a FREE phone, text WIN to 80086 now")
    idx, lengths = pad_batch([a, b], enc.eot_token)
    with torch.no_grad():
        both = clf(idx, lengths)
        assert torch.allclose(both[0], clf(torch.tensor([a]))[0], atol=1e-5)
        assert torch.allclose(both[1], clf(torch.tensor([b]))[0], atol=1e-5)
        # causal: the score of a prefix is the score read at the prefix's last token of the longer sequence
        assert torch.allclose(clf(torch.tensor([b[:4]]))[0], clf(torch.tensor([b]), torch.tensor([4]))[0], atol=1e-5)
        assert not torch.allclose(clf(torch.tensor([b]))[0], clf(torch.tensor([b]), torch.tensor([4]))[0], atol=1e-5)
    with pytest.raises(ValueError, match="lengths must be 2 numbers in 1.."): clf(idx, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="does not generate"): clf.generate(idx, 3)


def test_from_gpt_copies_all_but_the_head(enc):
    g = tiny_gpt(enc)
    c = GPTClassifier.from_gpt(g)
    sd, sc = g.state_dict(), c.state_dict()
    assert all(torch.equal(sd[k], sc[k]) for k in sd if not k.startswith("lm_head."))
    assert c.lm_head.weight.shape == (2, 32) and c.lm_head.bias is not None
    assert g.lm_head.weight is g.transformer.wte.weight  # the source keeps its tied head


@pytest.mark.parametrize("mode, trained", [
    ("head", {"lm_head.weight", "lm_head.bias"}),
    ("last", {"lm_head", "transformer.ln_f", "transformer.h.1"}),
    ("all", None),
])
def test_set_trainable(enc, mode, trained):
    c = set_trainable(GPTClassifier.from_gpt(tiny_gpt(enc)), mode)
    names = {n for n, p in c.named_parameters() if p.requires_grad}
    if trained is None: assert names == {n for n, _ in c.named_parameters()}
    else: assert names and all(n.startswith(tuple(trained)) for n in names) and \
            all(any(n.startswith(t) for n in names) for t in trained)


def test_lora_mode_trains_adapters_and_head(enc):
    c = set_trainable(GPTClassifier.from_gpt(tiny_gpt(enc)), "lora", lora_r=2, lora_targets=("c_attn",))
    names = {n for n, p in c.named_parameters() if p.requires_grad}
    assert names == {"lm_head.weight", "lm_head.bias"} | {f"transformer.h.{i}.attn.c_attn.lora_{x}" for i in (0, 1) for x in "AB"}
    with pytest.raises(ValueError, match="trainable must be one of"): set_trainable(c, "some")


# ---------------------------------------------------------------------------------------------- metrics
def test_binary_metrics_by_hand():
    r = binary_metrics([1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0])  # TP 2, FP 1, FN 1, TN 2
    assert r["confusion"] == [[2, 1], [1, 2]]
    assert (r["accuracy"], r["precision"], r["recall"]) == (4 / 6, 2 / 3, 2 / 3) and math.isclose(r["f1"], 2 / 3)
    z = binary_metrics([0, 0], [0, 1])
    assert (z["precision"], z["recall"], z["f1"]) == (0.0, 0.0, 0.0)  # 0/0 is 0, never NaN
    assert binary_metrics([], [])["accuracy"] == 0.0


# ---------------------------------------------------------------------------------------------- train_classifier
def _records(n=20):
    return [(f"{HAM[i % len(HAM)]} {i}", 0) for i in range(n)] + [(f"{SPAM[i % len(SPAM)]} {i}", 1) for i in range(n)]


def test_train_writes_a_classifier_that_loads_back(tmp_path, enc):
    base = tiny_gpt(enc)
    s = train_classifier((base, enc), _records(), tmp_path / "run", trainable="last", epochs=1, batch_size=8, progress=False)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["classifier.pt", "confusion.png", "log.jsonl", "summary.json"]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert saved["test_accuracy"] == s["test_accuracy"] and saved["kind"] == "classifier"
    assert set(saved["metrics"]) == {"validation", "test"}
    assert set(saved["metrics"]["test"]) >= {"accuracy", "precision", "recall", "f1", "confusion"}
    assert saved["split"] == {"train": 28, "validation": 4, "test": 8}
    ck = load_checkpoint(tmp_path / "run" / "classifier.pt")
    assert ck["kind"] == "classifier" and ck["labels"] == ["ham", "spam"]
    m, e = load_classifier(tmp_path / "run")
    test = split_sms(balance(_records(), 0), seed=0)[2]
    assert evaluate(m, e, test)["accuracy"] == s["test_accuracy"]  # the checkpoint is the model that was scored
    assert base.lm_head.weight is base.transformer.wte.weight  # the model given in memory is untouched


def test_training_learns_an_easy_task(tmp_path, enc):
    s = train_classifier((tiny_gpt(enc), enc), _records(40), tmp_path / "r", trainable="all", epochs=4, batch_size=8,
                         lr=3e-3, progress=False, save=False)
    assert s["test_accuracy"] >= 0.9 and s["val_accuracy"] >= 0.9, s  # the words "WIN", "FREE", digits give spam away


def test_lora_run_saves_a_plain_classifier(tmp_path, enc):
    s = train_classifier((tiny_gpt(enc), enc), _records(), tmp_path / "l", trainable="lora", lora_r=2, epochs=1, progress=False)
    ck = load_checkpoint(tmp_path / "l" / "classifier.pt")
    assert not any("lora_" in k for k in ck["model"])  # merged: a plain classifier
    m, e = load_classifier(tmp_path / "l")
    assert not any(isinstance(x, LoRALinear) for x in m.modules())
    assert evaluate(m, e, split_sms(balance(_records(), 0), seed=0)[2])["accuracy"] == s["test_accuracy"]


def test_max_seconds_stops_early_and_still_saves(tmp_path, enc, monkeypatch):
    # a clock that moves 1 s per reading: the deadline passes after the first step whatever the machine's speed
    clock = iter(range(10**6))
    monkeypatch.setattr(classify, "time", types.SimpleNamespace(monotonic=lambda: float(next(clock))))
    s = train_classifier((tiny_gpt(enc), enc), _records(), tmp_path / "t", epochs=50, max_seconds=0.01, progress=False)
    assert s["epochs_done"] == 1 and Path(s["checkpoint"]).exists()


def test_runs_are_never_overwritten_unasked(tmp_path, enc):
    train_classifier((tiny_gpt(enc), enc), _records(), tmp_path / "run", epochs=1, progress=False)
    with pytest.raises(FileExistsError, match="already holds a classifier.*overwrite=True"):
        train_classifier((tiny_gpt(enc), enc), _records(), tmp_path / "run", epochs=1, progress=False)
    train_classifier((tiny_gpt(enc), enc), _records(), tmp_path / "run", epochs=1, progress=False, overwrite=True)
    (tmp_path / "pre").mkdir(); (tmp_path / "pre" / "ckpt_0000200.pt").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="holds other files"):
        train_classifier((tiny_gpt(enc), enc), _records(), tmp_path / "pre", epochs=1, progress=False, overwrite=True)
    assert (tmp_path / "pre" / "ckpt_0000200.pt").read_bytes() == b"x"


@pytest.mark.parametrize("kw, msg", [
    (dict(epochs=0), "epochs must be an integer >= 1, got 0"), (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(lr=-1.0), "lr must be a number > 0"), (dict(lr=float("inf")), "lr must be a number > 0"),
    (dict(trainable="top"), "trainable must be head or last or all or lora"), (dict(max_len=0), "max_len must be an integer >= 1"),
    (dict(lora_r=0), "lora_r must be an integer >= 1"), (dict(lora_targets=()), "lora_targets must be one or more"),
    (dict(warmup_frac=1.0), "warmup_frac must be a number in [0, 1)"), (dict(max_seconds=0), "max_seconds must be a number of seconds > 0"),
    (dict(seed=-1), "seed must be an integer in [0, 2**63)"), (dict(device="tpu"), "device must be auto, cpu, cuda"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, enc, monkeypatch, kw, msg):
    monkeypatch.setattr(classify, "load_sms", lambda *a: pytest.fail("data loaded before the arguments were checked"))
    monkeypatch.setattr(classify, "load_model", lambda *a, **k: pytest.fail("model loaded before the arguments were checked"))
    with pytest.raises(ValueError) as e: train_classifier("some/base.pt", None, tmp_path / "x", **kw)
    assert msg in str(e.value)
    assert not (tmp_path / "x").exists()


def test_bad_records_are_named(tmp_path, enc):
    with pytest.raises(ValueError, match="record 1 is .*label 0 \\(ham\\) or 1 \\(spam\\)"):
        train_classifier((tiny_gpt(enc), enc), [("ok", 0), ("spam!", "spam")], tmp_path / "x")


def test_load_classifier_refuses_other_checkpoints(tmp_path, base_ckpt):
    with pytest.raises(CheckpointError, match="is a pretrain checkpoint, not a classifier; .*classify train --init"):
        load_classifier(base_ckpt)
    with pytest.raises(FileNotFoundError, match="holds no classifier.pt"): load_classifier(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch file"): load_classifier(tmp_path / "junk.pt")


def test_predict_long_and_many_texts(tmp_path, enc):
    train_classifier((tiny_gpt(enc, block_size=16), enc), _records(), tmp_path / "r", epochs=1, progress=False)
    m, e = load_classifier(tmp_path / "r")
    texts = ["WIN " * 200, "ok"] + [f"message {i}" for i in range(70)]  # longer than the context; more than one batch
    out = predict(m, e, texts, batch_size=32)
    assert len(out) == 72 and all(o["label"] in LABELS and math.isclose(sum(o["probabilities"].values()), 1, abs_tol=1e-6) for o in out)
    one_by_one = torch.cat([class_logits(m, e, [t]) for t in texts[:5]])
    assert torch.allclose(class_logits(m, e, texts[:5], batch_size=2), one_by_one, atol=1e-5)  # batching changes nothing
    with pytest.raises(TypeError, match=r"predict\(model, enc, \[text\]\)"): predict(m, e, "one text")
    with pytest.raises(ValueError, match="text 1 is empty"): predict(m, e, ["ok", ""])


# ---------------------------------------------------------------------------------------------- the command line
def test_cli_train_then_predict(tmp_path, base_ckpt, sms_file, capsys):
    rc = cli(["train", "--init", str(base_ckpt), "--data", str(sms_file), "--out", str(tmp_path / "run"), "--epochs", "1",
              "--max-len", "24", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "validation accuracy" in out and "test       accuracy" in out and "classifier.pt" in out
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["args"]["data"] == str(sms_file) and s["max_len"] == 24 and 0 <= s["test_accuracy"] <= 1
    rc = cli(["predict", "--model", str(tmp_path / "run"), "WIN a FREE phone", "see you at 7"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(lines) == 2
    r = json.loads(lines[0])
    assert r["text"] == "WIN a FREE phone" and r["label"] in LABELS and set(r["probabilities"]) == set(LABELS)


@pytest.mark.parametrize("argv, msg", [
    (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    (["--batch-size", "-2"], "--batch-size must be an integer >= 1"),
    (["--lr", "nan"], "--lr must be a number > 0, got nan"),
    (["--max-len", "0"], "--max-len must be an integer >= 1"),
    (["--lora-r", "0"], "--lora-r must be an integer >= 1"),
    (["--lora-targets", " , "], "--lora-targets must be one or more layer names"),
    (["--warmup-frac", "2"], "--warmup-frac must be a number in [0, 1)"),
    (["--max-seconds", "-1"], "--max-seconds must be a number of seconds > 0"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda"),
    (["--data", "missing.txt"], "--data missing.txt does not exist"),
])
def test_cli_train_checks_every_flag_before_any_work(tmp_path, base_ckpt, sms_file, capsys, monkeypatch, argv, msg):
    monkeypatch.setattr(classify, "load_sms", lambda *a: pytest.fail("data loaded before the flags were checked"))
    monkeypatch.setattr(classify, "read_sms", lambda *a: pytest.fail("data read before the flags were checked"))
    monkeypatch.setattr(classify, "load_model", lambda *a, **k: pytest.fail("model loaded before the flags were checked"))
    base = ["train", "--init", str(base_ckpt), "--data", str(sms_file), "--out", str(tmp_path / "run")]
    rc = cli(base + argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("nanogpt-course classify train: error: ") and msg in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_train_errors(tmp_path, base_ckpt, sms_file, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("ham\tok\nspam\tWIN\nhams\toops\n")
    assert cli(["train", "--init", str(base_ckpt), "--data", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert f"error: {bad}, line 3: the label is 'hams'" in capsys.readouterr().err
    assert cli(["train", "--init", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "r")]) == 2
    assert "--init " + str(tmp_path / "nope.pt") + " does not exist" in capsys.readouterr().err
    (tmp_path / "r2").mkdir(); (tmp_path / "r2" / "classifier.pt").write_bytes(b"mine")
    assert cli(["train", "--init", str(base_ckpt), "--data", str(sms_file), "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "already holds a classifier" in err and "pass --overwrite to replace it" in err
    assert (tmp_path / "r2" / "classifier.pt").read_bytes() == b"mine"


@pytest.mark.parametrize("argv, msg", [
    (["--model", "{tmp}/nowhere", "hi"], "--model {tmp}/nowhere does not exist"),
    (["--model", "{base}", "hi"], "is a pretrain checkpoint, not a classifier"),
    (["--model", "{base}", "hi", "  "], "message 2 is empty"),
    (["--model", "{base}", "--batch-size", "0", "hi"], "--batch-size must be an integer >= 1, got 0"),
    (["--model", "{base}", "--device", "tpu", "hi"], "--device must be auto, cpu, cuda"),
])
def test_cli_predict_errors(tmp_path, base_ckpt, capsys, argv, msg):
    fill = lambda s: s.replace("{tmp}", str(tmp_path)).replace("{base}", str(base_ckpt))
    rc = cli(["predict"] + [fill(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("nanogpt-course classify predict: error: ") and fill(msg) in err and "Traceback" not in err


def test_cli_usage_errors_exit_2(capsys):
    for argv in ([], ["train"], ["predict", "--model", "m"], ["evaluate"]):
        with pytest.raises(SystemExit) as e: cli(argv)
        assert e.value.code == 2
    assert "nanogpt-course classify" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- a classifier among language models
def test_load_model_refuses_a_classifier_by_name(tmp_path, enc):
    "train.load_model used to fail deep in load_state_dict (size mismatch); it names the file and the right loader."
    from nanogpt_course.train import load_model
    train_classifier((tiny_gpt(enc), enc), _records(), tmp_path / "run", epochs=1, progress=False)
    ck = tmp_path / "run" / "classifier.pt"
    for spec in (ck, tmp_path / "run"):  # the file, and the run folder (whose only *.pt is classifier.pt)
        with pytest.raises(CheckpointError) as e: load_model(spec)
        msg = str(e.value)
        assert msg.startswith(f"{ck} is a classifier") and "nanogpt_course.classify.load_classifier" in msg
        assert "POST /v1/classifications" in msg


@pytest.mark.parametrize("argv, msg", [
    (["--port", "70000"], "--port must be in [0, 65535], got 70000"),
    (["--port", "-1"], "--port must be in [0, 65535], got -1"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda"),
    (["--model", "{tmp}/nowhere"], "--model {tmp}/nowhere does not exist"),
    (["--checkpoint", "{tmp}/lm.pt"], "--checkpoint {tmp}/lm.pt does not exist"),
])
def test_cli_serve_checks_every_flag_before_any_work(tmp_path, base_ckpt, capsys, monkeypatch, argv, msg):
    monkeypatch.setattr(classify, "load_classifier", lambda *a, **k: pytest.fail("classifier loaded before the flags were checked"))
    monkeypatch.setattr(classify, "load_model", lambda *a, **k: pytest.fail("model loaded before the flags were checked"))
    fill = lambda s: s.replace("{tmp}", str(tmp_path))
    rc = cli(["serve", "--model", str(tmp_path)] + [fill(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("nanogpt-course classify serve: error: ") and fill(msg) in err and "Traceback" not in err


def test_cli_serve_errors_name_the_file(tmp_path, base_ckpt, enc, capsys):
    assert cli(["serve", "--model", str(base_ckpt)]) == 2  # a language model is no classifier
    assert "is a pretrain checkpoint, not a classifier" in capsys.readouterr().err
    train_classifier((tiny_gpt(enc), enc), _records(), tmp_path / "run", epochs=1, progress=False)
    ck = tmp_path / "run" / "classifier.pt"
    assert cli(["serve", "--model", str(ck), "--checkpoint", str(ck)]) == 2  # nor a classifier a language model
    err = capsys.readouterr().err
    assert f"{ck} is a classifier" in err and "Traceback" not in err


def test_cli_serve_answers_classifications(tmp_path, base_ckpt, enc):
    "`nanogpt-course classify serve` (through the dispatcher) serves POST /v1/classifications on a real port, beside a language model."
    import subprocess, sys, time, httpx
    from helpers import free_port
    s = train_classifier((tiny_gpt(enc), enc), _records(), tmp_path / "spam", epochs=1, progress=False)
    m, e = load_classifier(s["checkpoint"])
    port = free_port()
    code = "import sys; from nanogpt_course.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "classify", "serve", "--model", s["checkpoint"], "--checkpoint", str(base_ckpt),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        url, t0 = f"http://127.0.0.1:{port}", time.monotonic()
        while True:
            try: h = httpx.get(url + "/health", timeout=2).json(); break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() - t0 < 90, "the server did not come up"
                time.sleep(0.3)
        assert h["classifiers"] == ["spam"] and h["models"] == ["base"]  # named after the run folder and the checkpoint
        texts = ["WINNER! Call 09061701461 now", "see you at 7"]
        r = httpx.post(url + "/v1/classifications", json={"model": "spam", "input": texts}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["data"] == [{"index": i, **p} for i, p in enumerate(predict(m, e, texts))]  # what predict says
        r = httpx.post(url + "/v1/classifications", json={"model": "spam", "input": 3}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        r = httpx.post(url + "/v1/completions", json={"model": "base", "prompt": "ok", "max_tokens": 2}, timeout=30)
        assert r.status_code == 200 and r.json()["model"] == "base"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode in (0, -15), out  # uvicorn shuts down cleanly, then re-raises SIGTERM
    assert "serving classifier spam and base" in out and f"127.0.0.1:{port}/v1/classifications" in out, out
