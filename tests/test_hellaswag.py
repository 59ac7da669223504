"""HellaSwag evaluation (nanogpt_course.hellaswag): DDP split + all-reduce under `torchrun` (gloo) against one process,
batched == one example at a time, the CLI (in process, under torchrun, errors), and the loaders (local HTTP download and
cache, Hugging Face `datasets` with string labels, malformed lines). Self-contained: a small BPE tokenizer, a tiny GPT
and HellaSwag-schema files written here."""
import functools, http.server, json, os, socket, subprocess, sys, threading, urllib.error, urllib.request
from pathlib import Path
import pytest
import torch

from nanogpt_course import hellaswag as H
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.tokenizer import BPETokenizer, stdlib_corpus
from nanogpt_course.train import load_model, pretrain, read_log
from nanogpt_course.hellaswag import hellaswag_hook
from helpers import free_port, save_course_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    "A 320-token BPE, a tiny GPT trained for a few steps (so its choices are not all ties), its checkpoint, data files."
    d = tmp_path_factory.mktemp("hellaswag")
    text = stdlib_corpus(max_chars=150_000)
    enc = BPETokenizer.train(text[:60_000], 320).to_tiktoken()
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=enc.n_vocab, n_embd=32))
    ids = torch.tensor(enc.encode_ordinary(text[:120_000]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(15):
        ix = torch.randint(len(ids) - 65, (8,))
        _, loss = model(torch.stack([ids[i:i + 64] for i in ix]), torch.stack([ids[i + 1:i + 65] for i in ix]))
        opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    ckpt = d / "tiny.pt"
    save_course_checkpoint(ckpt, model, enc, "pretrain", step=15)
    (d / "corpus.txt").write_text(text, encoding="utf-8")
    # 37 examples: an odd number that 2 ranks cannot split evenly; 17 with contexts long enough to need cropping
    # (scored as four rows), 20 short enough to be scored packed (one row an example)
    examples = (H.make_mc_examples(text[120_000:], enc, n=17, seed=3, ctx_words=40, end_words=5)
                + H.make_mc_examples(text[120_000:], enc, n=20, seed=4, ctx_words=10, end_words=5))
    for e in examples[:3]: e["label"] = str(e["label"])  # Hugging Face style string labels must work too
    data = d / "val.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return dict(dir=d, enc=enc, model=model, ckpt=ckpt, data=data, examples=H.load_hellaswag(path=data))


def _torchrun(args, tmp, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port())] + args
    r = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def test_block_size_cropping_is_exercised(setup):
    rows = [H.make_rows(*H.render_example(e, setup["enc"]), None) for e in setup["examples"]]
    assert max(len(t) for r in rows for t, _ in r) > setup["model"].config.block_size


def test_batched_equals_one_at_a_time(setup):
    m, enc, ex = setup["model"], setup["enc"], setup["examples"]
    one = H.evaluate(m, enc, ex, batch_size=1)
    many = H.evaluate(m, enc, ex, batch_size=16)
    for k in ("pred", "pred_norm", "pred_norm_bytes", "n_tokens"):
        assert [p[k] for p in one["predictions"]] == [p[k] for p in many["predictions"]], k
    assert torch.allclose(torch.tensor([p["logprobs"] for p in one["predictions"]]),
                          torch.tensor([p["logprobs"] for p in many["predictions"]]), atol=1e-4)
    assert one["n"] == many["n"] == 37 and one["acc"] == many["acc"] and one["acc_norm"] == many["acc_norm"]
    # real choices 0..3, and not one constant answer (the model was trained a little, so its scores are not all ties)
    assert all(0 <= p[k] <= 3 for p in many["predictions"] for k in ("pred", "pred_norm", "pred_norm_bytes"))
    assert len({p["pred_norm"] for p in many["predictions"]}) > 1



def test_packed_equals_four_rows(setup):
    "One packed row per example (context once) gives the four-row scores; cropped examples fall back to four rows."
    m, enc, ex = setup["model"], setup["enc"], setup["examples"]
    fits = [H.fits_packed(*H.render_example(e, enc), m.config.block_size) for e in ex]
    assert any(fits) and not all(fits)  # both paths run inside one evaluate call
    packed, rows = H.evaluate(m, enc, ex, batch_size=8), H.evaluate(m, enc, ex, batch_size=8, pack=False)
    for k in ("pred", "pred_norm", "pred_norm_bytes", "n_tokens"):
        assert [p[k] for p in packed["predictions"]] == [p[k] for p in rows["predictions"]], k
    assert torch.allclose(torch.tensor([p["logprobs"] for p in packed["predictions"]]),
                          torch.tensor([p["logprobs"] for p in rows["predictions"]]), atol=1e-4)
    # a model without positions and masks (here: logits only, as a Hugging Face model gives) is scored four rows an example
    class LogitsOnly(torch.nn.Module):
        def __init__(self, g): super().__init__(); self.g = g
        def forward(self, idx): return self.g(idx)[0]
    assert not H.can_pack(LogitsOnly(m)) and H.can_pack(m)
    short = [e for e, f in zip(ex, fits) if f]  # the wrapper hides block_size, so nothing may need cropping
    other, ours = H.evaluate(LogitsOnly(m).eval(), enc, short, batch_size=4), H.evaluate(m, enc, short, batch_size=4)
    assert [p["pred_norm"] for p in other["predictions"]] == [p["pred_norm"] for p in ours["predictions"]]

def test_bf16_scores_match_float32(setup):
    "dtype='bfloat16' (CPU autocast) moves the scores by bf16 rounding only, batched or not, packed or as four rows."
    m, enc, ex = setup["model"], setup["enc"], setup["examples"]
    lp = lambda r: torch.tensor([p["logprobs"] for p in r["predictions"]])
    f32 = H.evaluate(m, enc, ex, batch_size=16)
    one, many = (H.evaluate(m, enc, ex, batch_size=b, dtype="bfloat16") for b in (1, 16))
    rows = H.evaluate(m, enc, ex, batch_size=16, dtype="bfloat16", pack=False)
    for r in (one, many, rows):
        assert not torch.equal(lp(r), lp(f32))  # autocast really ran
        assert torch.allclose(lp(r), lp(f32), atol=0.15), (lp(r) - lp(f32)).abs().max()
    # where float32's per-token averages separate the best ending clearly, bf16 picks the same one, batched or not
    avg = lp(f32) / torch.tensor([p["n_tokens"] for p in f32["predictions"]])
    top2 = avg.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1] > 0.05).tolist()
    assert sum(clear) >= 10
    for r in (one, many, rows):
        assert all(p["pred_norm"] == q["pred_norm"] for p, q, c in zip(r["predictions"], f32["predictions"], clear) if c)
    with pytest.raises(ValueError, match="dtype must be"): H.evaluate(m, enc, ex, dtype="float16")
    assert next(m.parameters()).dtype == torch.float32  # autocast: the model's own weights stay as they were


DDP_SCRIPT = r'''
import json, sys, torch, torch.distributed as dist
from nanogpt_course import hellaswag as H
from nanogpt_course.train import load_model, pretrain, read_log
from nanogpt_course.hellaswag import hellaswag_hook
dist.init_process_group("gloo")
model, enc = load_model(sys.argv[1])
res = H.evaluate(model, enc, H.load_hellaswag(path=sys.argv[2]), batch_size=4)   # rank/world_size from the process group
json.dump(res, open(f"{sys.argv[3]}.{dist.get_rank()}.json", "w"))
dist.destroy_process_group()
'''


def test_ddp_split_and_reduce_match_one_process(setup, tmp_path):
    "2 gloo ranks: each scores its half, the all-reduce gives both ranks every prediction, equal to one process."
    (tmp_path / "ddp_eval.py").write_text(DDP_SCRIPT)
    _torchrun([str(tmp_path / "ddp_eval.py"), str(setup["ckpt"]), str(setup["data"]), str(tmp_path / "res")], tmp_path)
    single = H.evaluate(*load_model(setup["ckpt"]), setup["examples"], batch_size=4)
    ranks = [json.loads((tmp_path / f"res.{r}.json").read_text()) for r in (0, 1)]
    assert [r["n_scored"] for r in ranks] == [19, 18]  # each rank scored only its strided share of the 37
    for res in ranks:
        assert res["n"] == single["n"] == 37
        assert res["n_correct"] == single["n_correct"] and res["n_correct_norm"] == single["n_correct_norm"]
        assert [p["pred_norm"] for p in res["predictions"]] == [p["pred_norm"] for p in single["predictions"]]
        assert [p["index"] for p in res["predictions"]] == list(range(37))
        assert torch.allclose(torch.tensor([p["logprobs"] for p in res["predictions"]]),
                              torch.tensor([p["logprobs"] for p in single["predictions"]]), atol=1e-4)


def test_cli_under_torchrun(setup, tmp_path):
    out = tmp_path / "r.json"
    r = _torchrun(["-m", "nanogpt_course.hellaswag", "hellaswag", "--model", str(setup["ckpt"]), "--data", str(setup["data"]),
                   "--batch-size", "3", "--no-progress", "--json", str(out)], tmp_path)
    single = H.evaluate(setup["model"], setup["enc"], setup["examples"])
    res = json.loads(out.read_text())
    assert res["world_size"] == 2 and res["n"] == 37
    assert res["acc"] == single["acc"] and res["acc_norm"] == single["acc_norm"]
    assert r.stdout.count("hellaswag on ") == 1, r.stdout  # printed on rank 0 only
    assert f"acc_norm {single['acc_norm']:.4f}" in r.stdout


def test_cli_in_process(setup, tmp_path, capsys):
    from nanogpt_course.cli import main
    out = tmp_path / "sub" / "r.json"
    assert main(["eval", "hellaswag", "--model", str(setup["ckpt"]), "--data", str(setup["data"]), "--limit", "10",
                 "--no-progress", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 10 and len(res["predictions"]) == 10 and res["task"] == "hellaswag" and res["dtype"] == "auto"
    assert f"acc {res['acc']:.4f}" in capsys.readouterr().out
    assert main(["eval", "hellaswag", "--model", str(setup["ckpt"]), "--data", str(setup["data"]), "--limit", "10",
                 "--no-progress", "--dtype", "bfloat16", "--json", str(out)]) == 0
    res16 = json.loads(out.read_text())
    assert res16["dtype"] == "bfloat16" and res16["predictions"][0]["logprobs"] != res["predictions"][0]["logprobs"]
    # the held-out multiple-choice set of a text file
    assert main(["eval", "mc", "--model", str(setup["ckpt"]), "--text", str(setup["dir"] / "corpus.txt"), "--n", "20",
                 "--no-progress", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 20


def test_cli_errors_are_clear(setup, tmp_path, capsys):
    from nanogpt_course.cli import main
    bad = tmp_path / "bad.jsonl"
    lines = setup["data"].read_text().splitlines()
    bad.write_text("\n".join(lines[:4] + ['{"ctx": "x", "endings": ["a", "b"], "label": 0}'] + lines[4:6]) + "\n")
    assert main(["eval", "hellaswag", "--model", str(setup["ckpt"]), "--data", str(bad), "--no-progress"]) == 1
    assert "bad.jsonl:5: endings must be a list of 4" in capsys.readouterr().err
    assert main(["eval", "hellaswag", "--model", str(setup["ckpt"]), "--data", str(tmp_path / "none.jsonl")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "hellaswag", "--model", str(tmp_path / "nope.pt"), "--data", str(setup["data"])]) == 1
    assert "nope.pt" in capsys.readouterr().err
    assert main(["eval", "mc", "--model", str(setup["ckpt"])]) == 1
    assert "--text" in capsys.readouterr().err


def test_download_and_cache_over_http(setup, tmp_path):
    "The urllib download, from a local HTTP server: cached atomically, then read without the network."
    srv_dir = tmp_path / "srv"; srv_dir.mkdir()
    (srv_dir / "hellaswag_val.jsonl").write_bytes(setup["data"].read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(srv_dir))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/hellaswag_val.jsonl"
    try: p = H.download_hellaswag("val", cache_dir=tmp_path / "cache", url=url)
    finally: srv.shutdown(); srv.server_close()
    assert p == tmp_path / "cache" / "hellaswag_val.jsonl" and p.read_bytes() == setup["data"].read_bytes()
    assert H.download_hellaswag("val", cache_dir=tmp_path / "cache", url=url) == p  # server is gone: the cache answers
    assert len(H.load_hellaswag("validation", cache_dir=tmp_path / "cache", source="url")) == 37


def test_no_network_error_says_how_to_get_the_data(tmp_path, monkeypatch):
    monkeypatch.setitem(H.HELLASWAG_URLS, "validation", f"http://127.0.0.1:{free_port()}/hellaswag_val.jsonl")
    with pytest.raises(RuntimeError, match="could not download HellaSwag validation") as e:
        H.load_hellaswag(cache_dir=tmp_path, source="url")
    assert "--data FILE" in str(e.value) and "source='hf'" in str(e.value)
    assert list(tmp_path.iterdir()) == []  # no half-written file


def test_hugging_face_loader_string_labels(setup, tmp_path, monkeypatch):
    "The `datasets` path, on a local folder in Rowan/hellaswag's layout (labels are strings there)."
    pytest.importorskip("datasets")
    hf = tmp_path / "hf"; hf.mkdir()
    recs = [{**e, "label": str(e["label"])} for e in setup["examples"][:5]]
    (hf / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    monkeypatch.setattr(H, "HF_DATASET", str(hf))
    got = H.load_hellaswag("val", source="hf", cache_dir=tmp_path / "hf_cache")
    assert [g["label"] for g in got] == [e["label"] for e in setup["examples"][:5]] and all(isinstance(g["label"], int) for g in got)
    assert [g["endings"] for g in got] == [e["endings"] for e in setup["examples"][:5]]


def _strict_json(text):
    "json.loads that refuses NaN and Infinity (Python's json accepts them; JSON does not)."
    def no(c): raise AssertionError(f"{c} in JSON output")
    return json.loads(text, parse_constant=no)


def test_labels_must_be_integers_0_to_3(setup, tmp_path, capsys):
    "1.7, true, '1.7', 3.0, 4 and -1 were read as some label by int(); each is refused with its file and line."
    from nanogpt_course.cli import main
    rec = setup["examples"][0]
    assert H.parse_example({**rec, "label": "2"})["label"] == 2 and H.parse_example({**rec, "label": 3})["label"] == 3
    for label in (1.7, True, False, "1.7", " 1", 3.0, 4, -1, [1]):
        with pytest.raises(ValueError, match=r"f\.jsonl:9: label must be 0, 1, 2 or 3 \(an integer: the index of the right ending\), got "):
            H.parse_example({**rec, "label": label}, where="f.jsonl:9: ")
    lines = setup["data"].read_text().splitlines()
    for label in ("1.7", "true"):
        bad = tmp_path / f"bad_{label}.jsonl"
        bad.write_text("\n".join(lines[:2] + [json.dumps({**json.loads(lines[2]), "label": json.loads(label)})] + lines[3:5]) + "\n")
        assert main(["eval", "hellaswag", "--model", str(setup["ckpt"]), "--data", str(bad), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert f"bad_{label}.jsonl:3: label must be" in err and f"got {json.loads(label)!r}" in err, err


def test_unlabelled_data_is_refused_and_nothing_is_nan(setup, tmp_path, capsys):
    "A file without labels (the test split) says so and what to use; evaluate never returns NaN; a mixed file names the line."
    from nanogpt_course.cli import main
    recs = [json.loads(l) for l in setup["data"].read_text().splitlines()[:6]]
    unl = tmp_path / "hellaswag_test.jsonl"
    unl.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "label"}) + "\n" for r in recs))
    out = tmp_path / "r.json"
    assert main(["eval", "hellaswag", "--model", str(setup["ckpt"]), "--data", str(unl), "--no-progress", "--json", str(out)]) == 1
    cap = capsys.readouterr()
    assert "hellaswag_test.jsonl has no labels" in cap.err and "evaluate the validation split" in cap.err, cap.err
    assert H.HELLASWAG_URLS["validation"] in cap.err and "nan" not in cap.out.lower() and not out.exists()
    # asked for on purpose (predictions only): the scores are None, not NaN, and the result is valid JSON
    ex = H.load_hellaswag(path=unl, labelled=False)
    assert [e["label"] for e in ex] == [-1] * 6
    r = H.evaluate(setup["model"], setup["enc"], ex, batch_size=4)
    assert r["n"] == 0 and r["acc"] is None and r["acc_norm"] is None and r["acc_norm_bytes"] is None
    assert len(r["predictions"]) == 6
    _strict_json(json.dumps(r, allow_nan=False))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps({**r_, "label": ""} if i == 3 else r_) + "\n" for i, r_ in enumerate(recs)))
    for labelled in (True, False):
        with pytest.raises(ValueError, match=r"mixed\.jsonl:4: no label, though .*mixed\.jsonl has labelled records \(5 of 6\)"):
            H.load_hellaswag(path=mixed, labelled=labelled)


def test_json_output_never_holds_nan(setup, tmp_path, monkeypatch, capsys):
    "A model whose scores are NaN (diverged weights) still writes valid JSON: non-finite numbers become null."
    from nanogpt_course.cli import main
    broken, enc = load_model(setup["ckpt"])
    with torch.no_grad(): broken.lm_head.weight.fill_(float("nan"))
    monkeypatch.setattr(H, "load_model", lambda spec, device: (broken, enc))
    out = tmp_path / "r.json"
    assert main(["eval", "hellaswag", "--model", "x", "--data", str(setup["data"]), "--limit", "5", "--no-progress", "--json", str(out)]) == 0
    res = _strict_json(out.read_text())
    assert res["n"] == 5 and all(lp is None for p in res["predictions"] for lp in p["logprobs"])
    assert "nan" not in capsys.readouterr().out.lower()


def _no_network(*a, **k):
    raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))


def test_offline_cli_ends_in_one_sentence(setup, tmp_path, monkeypatch, capsys):
    "No network: `eval hellaswag` without --data exits 1 with one line naming hellaswag_val.jsonl's URL, where to put it and --data FILE."
    from nanogpt_course.cli import main
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    hf_calls = []
    monkeypatch.setattr(H, "load_hf_hellaswag", lambda *a, **k: hf_calls.append(a) or pytest.fail("tried the hub with no network"))
    monkeypatch.setattr(H, "load_model", lambda *a, **k: pytest.fail("loaded the model before the data"))
    assert main(["eval", "hellaswag", "--model", str(setup["ckpt"]), "--cache-dir", str(tmp_path / "hs"), "--no-progress"]) == 1
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and err.startswith("nanogpt-course eval: error: could not download"), err
    assert H.HELLASWAG_URLS["validation"] in err and "Name or service not known" in err
    assert f"put it at {tmp_path / 'hs' / 'hellaswag_val.jsonl'}" in err and "--data FILE" in err and err.endswith(".")
    assert not hf_calls and not [p.name for p in (tmp_path / "hs").glob("*")] + [p.name for p in (tmp_path / "hs").glob(".*")]  # nothing half-downloaded


def test_server_error_tries_hugging_face_then_one_sentence(tmp_path, monkeypatch):
    "The server answered (404): the Hugging Face copy is tried; when it fails too, one sentence says what to download and where."
    srv_dir = tmp_path / "srv"; srv_dir.mkdir()  # empty: every file is a 404
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(srv_dir))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/hellaswag_val.jsonl"
    monkeypatch.setitem(H.HELLASWAG_URLS, "validation", url)
    def hf_fails(split, cache_dir=None, labelled=True):
        e = RuntimeError("could not load Rowan/hellaswag"); e.reason = "ConnectionError: hub down"; raise e
    monkeypatch.setattr(H, "load_hf_hellaswag", hf_fails)
    try:
        with pytest.raises(RuntimeError) as e: H.load_hellaswag(cache_dir=tmp_path / "hs")
    finally: srv.shutdown(); srv.server_close()
    msg = str(e.value)
    assert "\n" not in msg and "answered HTTP 404" in msg and "ConnectionError: hub down" in msg, msg
    assert f"download {url}" in msg and str(tmp_path / "hs" / "hellaswag_val.jsonl") in msg and "--data FILE" in msg


@pytest.mark.parametrize("flags, msg", [
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--batch-size", "-2"], "--batch-size must be an integer >= 1, got -2"),
    (["--limit", "0"], "--limit must be an integer >= 1, got 0"),
    (["--n", "-1"], "--n must be an integer >= 1, got -1"),
    (["--heldout", "0"], "--heldout must be a fraction in (0, 1]"),
    (["--heldout", "1.5"], "--heldout must be a fraction in (0, 1]"),
    (["--heldout", "nan"], "--heldout must be a fraction in (0, 1]"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda (or cuda:N) or mps, got 'tpu'"),
    (["--device", "cuda"], "--device cuda: this PyTorch sees no CUDA GPU (torch.cuda.is_available() is False); use --device cpu or auto"),
    (["--device", "cuda:3"], "--device cuda:3: this machine has 2 CUDA device(s), cuda:0 to cuda:1"),
    (["--json", "DIR"], "is a folder; give a file name"),
    (["--json", "FILE/r.json"], "is a file, not a folder"),
])
def test_cli_flags_checked_before_any_work(setup, tmp_path, monkeypatch, capsys, flags, msg):
    from nanogpt_course.cli import main
    if flags == ["--device", "cuda"]: monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if flags == ["--device", "cuda:3"]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True); monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    (tmp_path / "FILE").write_text("x"); (tmp_path / "DIR").mkdir()
    flags = [str(tmp_path / f) if f in ("DIR", "FILE/r.json") else f for f in flags]
    monkeypatch.setattr(H, "load_hellaswag", lambda *a, **k: pytest.fail("read the data before checking the flags"))
    monkeypatch.setattr(H, "load_model", lambda *a, **k: pytest.fail("loaded the model before checking the flags"))
    assert main(["eval", "hellaswag", "--model", str(setup["ckpt"]), "--data", str(setup["data"]), "--no-progress"] + flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("nanogpt-course eval: error: ") and msg in err and "Traceback" not in err, err


def test_cli_unknown_split_is_a_usage_error(setup, capsys):
    from nanogpt_course.cli import main
    with pytest.raises(SystemExit) as e: main(["eval", "hellaswag", "--model", str(setup["ckpt"]), "--split", "dev"])
    assert e.value.code == 2 and "argument --split: invalid choice: 'dev'" in capsys.readouterr().err


PRETRAIN = dict(preset="tiny", n_embd=32, batch_size=2, seq_len=16, total_batch_tokens=32, max_steps=3, warmup_steps=1,
                eval_every=0, sample_every=0, progress=False)


def _tiny_shards(tmp_path):
    "Shards of a small corpus with a 300-token BPE trained here."
    from nanogpt_course.data import prepare
    from nanogpt_course.tokenizer import BPETokenizer
    docs = [f"the cat sat on the mat number {i} and the dog ran home." for i in range(300)]
    BPETokenizer.train("\n".join(docs[:100]), 300).save(tmp_path / "tok.json")
    prepare(docs, tmp_path / "data", tokenizer=tmp_path / "tok.json", shard_tokens=5_000, val_tokens=500, num_proc=1, progress=False)
    return tmp_path / "data"


def test_hellaswag_hook_in_pretraining(tmp_path):
    "--hellaswag-every N evaluates a HellaSwag-schema file during training and logs it (in the run's dtype)."
    rows = [dict(ind=i, activity_label="x", ctx_a="the cat", ctx_b="sat on", ctx="the cat sat on", split="val", split_type="indomain",
                 source_id=str(i), endings=["a mat.", "the dog ran.", "its home.", "every bird."], label=i % 4) for i in range(8)]
    (tmp_path / "hs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = _tiny_shards(tmp_path)
    s = pretrain(data, out_dir=tmp_path / "run", hellaswag_every=2, hellaswag=str(tmp_path / "hs.jsonl"),
                 hooks=lambda cfg: [hellaswag_hook(cfg)], **PRETRAIN)
    assert s["steps"] == 3
    hs = [r for r in read_log(tmp_path / "run") if "hellaswag_acc_norm" in r]
    assert [r["step"] for r in hs] == [0, 2] and all(r["hellaswag_n"] == 8 and 0 <= r["hellaswag_acc_norm"] <= 1 for r in hs)
    # the command line plugs it in too: `nanogpt-course pretrain` is notebook 10's pretrain_cli
    from nanogpt_course.cli import main
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in PRETRAIN.items() if k not in ("preset", "progress")]
    assert main(["pretrain", "--data", str(data), "--out", str(tmp_path / "cli"), "--hellaswag-every", "2",
                 "--hellaswag", str(tmp_path / "hs.jsonl"), "--no-progress", *flags]) == 0
    assert [r["step"] for r in read_log(tmp_path / "cli") if "hellaswag_acc_norm" in r] == [0, 2]
