"""Token shards and the loader (nanogpt_course.data): formats, errors that name the file, resume of preparation, DDP slices.
Self-contained: every test writes its own corpus under tmp_path. GPT-2's encoding comes from tiktoken
(offline with TIKTOKEN_CACHE_DIR, as scripts/env.sh sets)."""
import json, signal, subprocess, sys, time
from pathlib import Path
import numpy as np
import pytest
import tiktoken
import torch

from nanogpt_course.data import HEADER_BYTES, ShardError, TokenLoader, cli, prepare, read_header, read_shard

ROOT = Path(__file__).resolve().parents[1]
DOCS = [f"Document {i}: the quick brown fox {'jumps ' * (i % 5)}over the lazy dog number {i * 7}." for i in range(400)]


def _all_tokens(d):
    meta = json.loads((Path(d) / "meta.json").read_text())
    return np.concatenate([read_shard(Path(d) / s["file"]) for s in meta["shards"]]).tolist()


def _expected(docs, enc):
    return [t for doc in docs for t in [enc.eot_token] + enc.encode_ordinary(doc)]


def test_local_formats_give_the_same_tokens(tmp_path):
    "txt (one document a line), jsonl and parquet holding the same documents give identical shards, eot-separated."
    import pyarrow as pa, pyarrow.parquet as pq
    (tmp_path / "c.txt").write_text("\n".join(DOCS))
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
    pq.write_table(pa.table({"text": DOCS}), tmp_path / "c.parquet")
    outs = {}
    for name, kw in [("c.txt", dict(split_text="line")), ("c.jsonl", {}), ("c.parquet", {})]:
        prepare(tmp_path / name, tmp_path / f"out_{name}", shard_tokens=1500, val_tokens=700, num_proc=2, progress=False, **kw)
        outs[name] = _all_tokens(tmp_path / f"out_{name}")
    enc = tiktoken.get_encoding("gpt2")
    assert outs["c.txt"] == outs["c.jsonl"] == outs["c.parquet"] == _expected(DOCS, enc)
    meta = json.loads((tmp_path / "out_c.jsonl" / "meta.json").read_text())
    assert [s["split"] for s in meta["shards"]][:2] == ["val", "train"] and meta["shards"][0]["tokens"] == 700
    assert all(s["tokens"] == 1500 for s in meta["shards"][1:-1]) and meta["dtype"] == "uint16"


def test_large_vocabulary_uses_uint32(tmp_path):
    "A tokenizer with ids above 65,535 gets 4-byte shards, and the ids survive the round trip."
    base = tiktoken.get_encoding("gpt2")
    big = tiktoken.Encoding("big", pat_str=base._pat_str, mergeable_ranks=base._mergeable_ranks,
                            special_tokens={"<|endoftext|>": 70000})
    meta = prepare(DOCS[:50], tmp_path / "big", tokenizer=big, shard_tokens=400, val_tokens=100, num_proc=2, progress=False)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == 70001
    assert read_header(tmp_path / "big" / "val_000000.bin")["dtype"].itemsize == 4
    toks = _all_tokens(tmp_path / "big")
    assert toks.count(70000) == 50 and toks == _expected(DOCS[:50], big)


def test_bad_shards_give_clear_errors(tmp_path):
    "Truncated, corrupt and foreign shards, an empty corpus and a missing path: each error names the file."
    prepare(DOCS, tmp_path / "d", shard_tokens=1500, val_tokens=700, num_proc=1, progress=False)
    good = tmp_path / "d" / "train_000000.bin"
    raw = good.read_bytes()
    cases = {}
    (tmp_path / "trunc").mkdir(); (tmp_path / "trunc" / "train_000000.bin").write_bytes(raw[:HEADER_BYTES + 100])
    cases["trunc"] = "is truncated"
    (tmp_path / "hdr").mkdir(); (tmp_path / "hdr" / "train_000000.bin").write_bytes(raw[:20])
    cases["hdr"] = "is truncated"
    flipped = bytearray(raw); flipped[HEADER_BYTES + 33] ^= 0x40
    (tmp_path / "flip").mkdir(); (tmp_path / "flip" / "train_000000.bin").write_bytes(bytes(flipped))
    cases["flip"] = "is corrupt"
    (tmp_path / "foreign").mkdir()  # e.g. a build-nanogpt .npy shard renamed, or any other file
    np.save(tmp_path / "foreign" / "x.npy", np.arange(5000, dtype=np.uint16))
    (tmp_path / "foreign" / "x.npy").rename(tmp_path / "foreign" / "train_000000.bin")
    cases["foreign"] = "is not a nanogpt-course token shard"
    for d, msg in cases.items():
        with pytest.raises(ShardError) as e:
            TokenLoader(tmp_path / d, B=2, T=16).next_batch()
        assert msg in str(e.value) and f"{d}/train_000000.bin" in str(e.value), str(e.value)
    # empty corpus: an empty file, an empty folder, documents that are all blank
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(ValueError, match="empty corpus"): prepare(tmp_path / "empty.txt", tmp_path / "e1", num_proc=1, progress=False)
    (tmp_path / "nofiles").mkdir()
    with pytest.raises(ValueError, match="empty corpus: folder .*nofiles"): prepare(tmp_path / "nofiles", tmp_path / "e2", progress=False)
    with pytest.raises(ValueError, match="empty corpus: no train shards"): TokenLoader(tmp_path / "nofiles", B=2, T=16)
    # missing paths
    with pytest.raises(FileNotFoundError, match="missing.jsonl"): prepare(tmp_path / "missing.jsonl", tmp_path / "e3", progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere"): TokenLoader(tmp_path / "nowhere", B=2, T=16)
    # a too-small corpus for the batch
    with pytest.raises(ValueError, match="fewer than one step needs"): TokenLoader(tmp_path / "d", B=64, T=64)


def test_cli_errors_and_success(tmp_path, capsys):
    "`nanogpt-course prepare` returns 1 with a message on a missing path, 0 on success (through the dispatcher too)."
    assert cli([str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")]) == 1
    assert "nope.txt does not exist" in capsys.readouterr().err
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in DOCS))
    from nanogpt_course.cli import main
    assert main(["prepare", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "o"), "--text-field", "body",
                 "--shard-tokens", "2000", "--num-proc", "1"]) == 0
    assert _all_tokens(tmp_path / "o") == _expected(DOCS, tiktoken.get_encoding("gpt2"))


def test_prepare_resumes_after_sigkill(tmp_path):
    "Kill `python -m nanogpt_course.data` mid-way; the same command finishes the job, with exactly the tokens of a clean run."
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
    docs = [" ".join(rng.choice(words, size=int(rng.integers(50, 400)))) for _ in range(6000)]
    (tmp_path / "big.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    args = [sys.executable, "-m", "nanogpt_course.data", str(tmp_path / "big.jsonl"), "--out", str(tmp_path / "run"),
            "--shard-tokens", "20000", "--val-tokens", "5000", "--num-proc", "1"]
    p = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta_path, deadline = tmp_path / "run" / "meta.json", time.time() + 120
    while time.time() < deadline:  # wait until a few shards are done, then kill without warning
        if meta_path.exists() and len(json.loads(meta_path.read_text())["shards"]) >= 4: break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    meta = json.loads(meta_path.read_text())
    assert not meta["complete"], "the run finished before it was killed; make the corpus bigger"
    done = len(meta["shards"])
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    meta2 = json.loads(meta_path.read_text())
    assert meta2["complete"] and len(meta2["shards"]) > done
    enc = tiktoken.get_encoding("gpt2")
    assert _all_tokens(tmp_path / "run") == _expected(docs, enc)
    # a second re-run does nothing
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "already prepared" in out.stdout


def test_loader_ddp_determinism_resume_and_epochs(tmp_path):
    "Ranks read disjoint slices that together equal one process's batch; same seed same batches; exact resume across epochs."
    prepare(DOCS, tmp_path / "d", shard_tokens=1500, val_tokens=700, num_proc=1, progress=False)
    one = TokenLoader(tmp_path / "d", B=4, T=16, seed=5)
    ranks = [TokenLoader(tmp_path / "d", B=2, T=16, rank=r, world_size=2, seed=5) for r in range(2)]
    seen = []
    for _ in range(200):  # several epochs of this small corpus
        x, y = one.next_batch()
        parts = [r.next_batch() for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
        seen.append(x)
    assert one.epoch >= 2
    again = TokenLoader(tmp_path / "d", B=4, T=16, seed=5)
    assert all(torch.equal(again.next_batch()[0], s) for s in seen)
    other = TokenLoader(tmp_path / "d", B=4, T=16, seed=6)
    assert not all(torch.equal(other.next_batch()[0], s) for s in seen[:20])
    # exact resume from every state along the way (mid-shard, at shard ends, across epochs)
    a = TokenLoader(tmp_path / "d", B=4, T=16, seed=5)
    for k in range(150):
        if k % 37 == 0:
            b = TokenLoader(tmp_path / "d", B=4, T=16, seed=5); b.load_state_dict(a.state_dict())
            for _ in range(30): assert torch.equal(a.next_batch()[0], b.next_batch()[0])
        a.next_batch()
    # documents are shuffled between epochs: each epoch's tokens are the same multiset, in another order
    e0, e1 = [], []
    c = TokenLoader(tmp_path / "d", B=4, T=16, seed=5)
    for ep, store in ((0, e0), (1, e1)):
        c.epoch, c.shard = ep, 0
        for s in range(len(c._order(ep))): c.shard = s; c._load(); store.append(np.asarray(c.tokens).copy())
    assert sorted(np.concatenate(e0).tolist()) == sorted(np.concatenate(e1).tolist())
    assert any(not np.array_equal(a_, b_) for a_, b_ in zip(e0, e1))
    # documents move whole when shuffled: each piece between two eots is one of DOCS, except the (at most two) pieces of
    # the documents that prepare cut at this shard's edges, which are a start or an end of one
    enc = tiktoken.get_encoding("gpt2")
    for toks in e1:
        t = toks.tolist(); eots = [i for i, x in enumerate(t) if x == enc.eot_token]
        pieces = [enc.decode(t[a + 1:b]) for a, b in zip(eots, eots[1:])]
        cut = [p for p in pieces if p not in DOCS]
        assert len(pieces) > 5 and len(cut) <= 2, cut
        assert all(any(d.startswith(p) or d.endswith(p) for d in DOCS) for p in cut), cut
    with pytest.raises(ValueError, match="seed"):
        TokenLoader(tmp_path / "d", B=4, T=16, seed=9).load_state_dict(one.state_dict())


def test_hub_reachable_honours_offline_flags_and_connects(monkeypatch):
    "One check, used by FineWeb-Edu (pipeline) and Dolly (sft): a listening port is reachable, a closed one and the offline flags are not."
    import socket
    from nanogpt_course.data import hub_reachable
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0)); srv.listen(1)
        port = srv.getsockname()[1]
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"): monkeypatch.delenv(k, raising=False)
        assert hub_reachable("127.0.0.1", port, timeout=1)
        for k, v in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "TRUE")):
            monkeypatch.setenv(k, v)
            assert not hub_reachable("127.0.0.1", port, timeout=1)
            monkeypatch.delenv(k)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); closed = s.getsockname()[1]  # bound, not listening: connections are refused
        assert not hub_reachable("127.0.0.1", closed, timeout=1)


def _small_tokenizer():
    "A 1,024-token tokenizer: GPT-2's first 1,023 merges and <|endoftext|> = 1023 (nothing to train or download)."
    base = tiktoken.get_encoding("gpt2")
    return tiktoken.Encoding("small", pat_str=base._pat_str, special_tokens={"<|endoftext|>": 1023},
                             mergeable_ranks={t: r for t, r in base._mergeable_ranks.items() if r < 1023})


BAD_NUMBERS = [(["--shard-tokens", "-5"], "--shard-tokens"), (["--val-tokens", "0"], "--val-tokens"),
               (["--val-tokens", "-1"], "--val-tokens"), (["--max-tokens", "0"], "--max-tokens"),
               (["--max-tokens", "-2"], "--max-tokens"), (["--num-proc", "0"], "--num-proc"), (["--num-proc", "-3"], "--num-proc"),
               (["--max-tokens", "300", "--val-tokens", "300"], "--max-tokens"), (["--shard-tokens", str(10**15)], "--shard-tokens")]


def test_prepare_checks_every_number_before_any_work(tmp_path, capsys):
    "Each numeric flag out of range is refused before anything is written, in a message that names the flag and its range."
    (tmp_path / "c.txt").write_text("\n\n".join(DOCS))
    # --shard-tokens 0 used to write empty shards forever: run it in a subprocess so a regression fails instead of hanging
    out = subprocess.run([sys.executable, "-m", "nanogpt_course.data", str(tmp_path / "c.txt"), "--out", str(tmp_path / "z"),
                          "--shard-tokens", "0", "--num-proc", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "--shard-tokens" in out.stderr and "from 1 up" in out.stderr, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and not (tmp_path / "z").exists()
    for extra, flag in BAD_NUMBERS:
        assert cli([str(tmp_path / "c.txt"), "--out", str(tmp_path / "o"), *extra]) == 1, extra
        err = capsys.readouterr().err
        assert err.startswith("nanogpt-course prepare: error: ") and flag in err, (extra, err)
        assert not (tmp_path / "o").exists(), extra
    # the function checks the same, naming the argument and the flag; floats and booleans are not counts
    for kw in (dict(shard_tokens=1.5e6), dict(num_proc=True), dict(chunksize=0), dict(val_tokens=-7)):
        with pytest.raises(ValueError, match=rf"{next(iter(kw))}.*must be a whole number from 1 up"):
            prepare(DOCS, tmp_path / "f", progress=False, **kw)
    assert not (tmp_path / "f").exists()


def test_shard_headers_are_checksummed_and_checked_against_the_tokenizer(tmp_path):
    "eot and vocab_size lie under the header's checksum; dataset_tokenizer checks meta.json, the tokenizer and every shard."
    from nanogpt_course.data import dataset_tokenizer
    small = _small_tokenizer()
    prepare(DOCS, tmp_path / "s", tokenizer=small, shard_tokens=3000, val_tokens=1000, num_proc=1, progress=False)
    enc, vocab = dataset_tokenizer(tmp_path / "s")
    assert (enc.n_vocab, vocab, enc.eot_token) == (1024, 1024, 1023)
    assert enc.encode_ordinary(DOCS[3]) == small.encode_ordinary(DOCS[3])
    prepare(DOCS, tmp_path / "g", shard_tokens=3000, val_tokens=1000, num_proc=1, progress=False)
    assert dataset_tokenizer(tmp_path / "g")[1] == 50257
    # a flipped bit in a header's eot is caught by the header checksum (it used to read as another tokenizer's shard)
    shard = tmp_path / "g" / "train_000001.bin"
    raw = bytearray(shard.read_bytes()); raw[28] ^= 0x01; shard.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match="train_000001.bin is corrupt: the checksum of its header"): read_header(shard)
    with pytest.raises(ShardError, match="train_000001.bin is corrupt"): dataset_tokenizer(tmp_path / "g")
    # the case: meta.json names gpt2 over shards made with the 1,024-token tokenizer
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "tokenizer": "gpt2", "eot": 50256, "vocab_size": 50257}))
    with pytest.raises(ShardError) as e: dataset_tokenizer(tmp_path / "s")
    msg = str(e.value)
    assert "s/val_000000.bin was made by a tokenizer with eot 1023 and vocab_size 1,024" in msg and "vocab_size 50,257" in msg, msg
    assert "re-run `nanogpt-course prepare" in msg
    meta_path.write_text(json.dumps({**meta, "tokenizer": "gpt2"}))  # only the tokenizer's name edited
    with pytest.raises(ShardError, match=r"meta.json says eot 1023 and vocab_size 1,024, but the tokenizer meta.json names \('gpt2'\)"):
        dataset_tokenizer(tmp_path / "s")
    meta_path.unlink()  # bare shards: GPT-2's are recognised by their headers, others are refused
    with pytest.raises(ShardError, match="has no meta.json and its shards are not GPT-2's"): dataset_tokenizer(tmp_path / "s")
    (tmp_path / "g" / "meta.json").unlink(); shard.unlink()
    assert dataset_tokenizer(tmp_path / "g")[1] == 50257


def test_old_version_1_shards_still_read(tmp_path):
    "A shard written before the header checksum (format version 1) reads as before."
    import struct, zlib
    toks = np.array([5, 6, 7, 50256], dtype="<u2")
    hdr = struct.pack("<8sIIQIII", b"NGCSHRD\x00", 1, 2, toks.size, zlib.crc32(toks.tobytes()), 50256, 50257).ljust(HEADER_BYTES, b"\0")
    (tmp_path / "train_000000.bin").write_bytes(hdr + toks.tobytes())
    assert read_shard(tmp_path / "train_000000.bin").tolist() == toks.tolist()
    assert read_header(tmp_path / "train_000000.bin")["version"] == 1


@pytest.mark.parametrize("name,body,msg", [
    ("s.jsonl", '{"text": "ok"}\n"just a string"\n', "s.jsonl:2: the line holds a string"),
    ("n.jsonl", '42\n', "n.jsonl:1: the line holds a number (42)"),
    ("i.jsonl", '{"text": "ok"}\n{"text": 7}\n', "i.jsonl:2: the 'text' field holds a number (7), not text"),
    ("l.jsonl", '{"text": ["a", "b"]}\n', "l.jsonl:1: the 'text' field holds a list, not text"),
    ("num.json", '3', "num.json holds a number (3)"),
    ("rec.json", '[{"text": "ok"}, 5]', "rec.json: record 2 of 2 is a number (5)"),
])
def test_bad_records_are_messages_naming_file_and_line(tmp_path, capsys, name, body, msg):
    "JSON values where records should be, and texts that are not strings: a one-line error naming the file and line, exit 1."
    (tmp_path / name).write_text(body)
    assert cli([str(tmp_path / name), "--out", str(tmp_path / "o"), "--num-proc", "1"]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert msg in last and last.startswith("nanogpt-course prepare: error: "), err


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "c.txt").write_text("\n\n".join(DOCS))
    (tmp_path / "taken").write_text("a user's file")
    assert cli([str(tmp_path / "c.txt"), "--out", str(tmp_path / "taken")]) == 1
    assert "--out" in (err := capsys.readouterr().err) and "taken is a file, not a folder" in err, err
    assert (tmp_path / "taken").read_text() == "a user's file"


def test_undecodable_text_and_damaged_meta_name_the_file(tmp_path, capsys):
    "Latin-1 text is refused (file, line, byte offset, how to convert), not decoded into U+FFFD; a damaged meta.json is named."
    raw = ("\n\n".join(DOCS[:50]) + "\n\nCaf\u00e9 cr\u00e8me, na\u00efve.\n").encode("latin-1")
    (tmp_path / "latin.txt").write_bytes(raw)
    assert cli([str(tmp_path / "latin.txt"), "--out", str(tmp_path / "o1"), "--num-proc", "1"]) == 1
    err = capsys.readouterr().err
    line = raw[:raw.index(0xE9)].count(b"\n") + 1
    assert f"latin.txt:{line}: not UTF-8 text (byte 0xe9 at byte offset {raw.index(0xE9):,})" in err and "iconv -f latin1 -t utf-8" in err, err
    raw = b'{"text": "fine"}\n{"text": "hello \xff"}\n'
    (tmp_path / "bad.jsonl").write_bytes(raw)
    assert cli([str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o2"), "--num-proc", "1"]) == 1
    assert f"bad.jsonl:2: not UTF-8 text (byte 0xff at byte offset {raw.index(0xFF)})" in capsys.readouterr().err
    # a garbage meta.json: every reader names it and says what to do
    prepare(DOCS, tmp_path / "d", shard_tokens=1500, val_tokens=700, num_proc=1, progress=False)
    (tmp_path / "d" / "meta.json").write_text('{"shards": [{"file": ')
    from nanogpt_course.data import dataset_tokenizer, shard_files
    for f in (lambda: shard_files(tmp_path / "d"), lambda: TokenLoader(tmp_path / "d", B=2, T=16),
              lambda: dataset_tokenizer(tmp_path / "d"),
              lambda: prepare(DOCS, tmp_path / "d", shard_tokens=1500, val_tokens=700, num_proc=1, progress=False)):
        with pytest.raises(ShardError) as e: f()
        assert "d/meta.json is damaged (not valid JSON" in str(e.value) and "re-run `nanogpt-course prepare" in str(e.value), str(e.value)


def test_network_sources_offline_end_in_one_sentence(tmp_path, monkeypatch):
    "Offline, fineweb-edu and hf:owner/name say what to download and how to prepare it, in one line, exit 1, nothing written."
    import nanogpt_course.data as D
    monkeypatch.setattr(D, "hub_reachable", lambda *a, **k: False)
    for src, wants in (("fineweb-edu", ["hf download HuggingFaceFW/fineweb-edu --repo-type dataset --include 'sample/10BT/*'",
                                        "nanogpt-course prepare data/fineweb-edu"]),
                       ("hf:someone/corpus", ["hf download someone/corpus --repo-type dataset", "nanogpt-course prepare data/corpus"])):
        err = _run_cli_err(D, [src, "--out", str(tmp_path / "o")])
        assert all(w in err for w in wants) and err.count("\n") == 1 and err.rstrip().endswith("."), err
        assert not (tmp_path / "o").exists()
        with pytest.raises(D.DataUnavailable): next(iter(D.iter_documents(src)))
    # reachable, but the stream fails (a broken connection, a wrong name): still one sentence, not a traceback
    import datasets
    monkeypatch.setattr(D, "hub_reachable", lambda *a, **k: True)
    def refuse(*a, **k): raise ConnectionError("Couldn't reach 'HuggingFaceFW/fineweb-edu' on the Hub")
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    err = _run_cli_err(D, ["fineweb-edu", "--out", str(tmp_path / "o2")])
    assert "streaming FineWeb-Edu failed after 0 rows (ConnectionError" in err and "hf download" in err, err


def _run_cli_err(D, argv):
    import contextlib, io
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf): rc = D.cli(argv)
    assert rc == 1, buf.getvalue()
    return buf.getvalue()


def test_prepare_fineweb_offline_from_the_shell(tmp_path):
    "The command as a user types it, with HF_HUB_OFFLINE=1: exit code 1, one line on stderr, no traceback."
    import os
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    main = "import sys; from nanogpt_course.cli import main; sys.exit(main())"  # what the `nanogpt-course` script runs
    out = subprocess.run([sys.executable, "-c", main, "prepare", "fineweb-edu", "--out", str(tmp_path / "edu")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr[-3000:]
    assert "sample/10BT" in out.stderr and not (tmp_path / "edu").exists()


def test_prepare_resumes_a_folder_whose_meta_names_gpt2_the_old_way(tmp_path, capsys):
    "meta.json written before tokenizer states were dicts holds the string 'gpt2'; preparing again resumes, not refuses."
    (tmp_path / "c.txt").write_text("\n".join(DOCS))
    kw = dict(shard_tokens=2000, num_proc=1, progress=False, split_text="line")
    meta = prepare(tmp_path / "c.txt", tmp_path / "o", **kw)
    assert meta["tokenizer"] == {"format": "tiktoken", "name": "gpt2"}
    meta_path = tmp_path / "o" / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "tokenizer": "gpt2"}))
    assert prepare(tmp_path / "c.txt", tmp_path / "o", **kw)["complete"]
    assert _all_tokens(tmp_path / "o") == _expected(DOCS, tiktoken.get_encoding("gpt2"))
