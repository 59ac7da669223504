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
