"""The tokenizer's command line, run as a user runs it: `nanogpt-course tokenizer ...` in a fresh process."""
import json, subprocess, sys

import pytest
from nanogpt_course.tokenizer import BPETokenizer, as_tokenizer_state, get_tokenizer, tokenizer_state

# the console script's entry point, in a fresh interpreter (works whether or not the package is pip-installed)
MAIN = "import sys; from nanogpt_course.cli import main; sys.exit(main(sys.argv[1:]))"
TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
        "of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
        "the rightful property of some one or other of their daughters. 1234 5678 café naïve 👋\n\n")


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-c", MAIN, "tokenizer", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def corpus(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT * 40, encoding="utf-8")
    b.write_text(TEXT.upper() * 40, encoding="utf-8")
    return a, b


def test_train_encode_decode(tmp_path, corpus):
    out = tmp_path / "sub" / "tok.json"
    r = run("train", "--input", *corpus, "--vocab-size", 400, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "trained a 400-token BPE on 2 file(s)" in r.stdout and "s ->" in r.stdout  # says how long it took
    saved = json.loads(out.read_text(encoding="utf-8"))  # a readable JSON file
    assert saved["format"] == "nanogpt-course/bpe-tokenizer" and len(saved["vocab"]) == 399
    enc = get_tokenizer(out)
    assert enc.n_vocab == 400 and enc.eot_token == 399
    # both files were learned from: the upper-case text has multi-byte tokens too
    assert len(enc.encode("TRUTH UNIVERSALLY")) < len("TRUTH UNIVERSALLY".encode())
    r = run("encode", "--tokenizer", out, "a truth universally acknowledged")
    assert r.returncode == 0, r.stderr
    ids = [int(x) for x in r.stdout.split()]
    assert ids == enc.encode("a truth universally acknowledged")
    r = run("decode", "--tokenizer", out, *ids)
    assert r.returncode == 0 and r.stdout.rstrip("\n") == "a truth universally acknowledged"
    r = run("encode", "--tokenizer", out, "--input", corpus[0])
    assert r.returncode == 0 and "bytes/token" in r.stdout


def test_cli_errors_are_clear(tmp_path, corpus):
    r = run("train", "--input", tmp_path / "missing.txt", "--out", tmp_path / "t.json")
    assert r.returncode == 2 and "missing.txt" in r.stderr and "not found" in r.stderr and "Traceback" not in r.stderr
    r = run("train", "--input", corpus[0], "--vocab-size", 100, "--out", tmp_path / "t.json")
    assert r.returncode == 2 and "too small" in r.stderr and not (tmp_path / "t.json").exists()
    (tmp_path / "empty.txt").write_text("")
    r = run("train", "--input", tmp_path / "empty.txt", "--out", tmp_path / "t.json")
    assert r.returncode == 2 and "empty" in r.stderr
    (tmp_path / "junk.json").write_bytes(b"\x00\xffnot json")
    r = run("encode", "--tokenizer", tmp_path / "junk.json", "hello")
    assert r.returncode == 2 and "not a tokenizer file" in r.stderr
    r = run("decode", "99999999")
    assert r.returncode == 2 and "outside" in r.stderr


def test_state_survives_a_checkpoint(tmp_path, corpus):
    torch = pytest.importorskip("torch")
    tok = BPETokenizer.train(corpus[0].read_text(encoding="utf-8"), 300)
    enc = tok.to_tiktoken()
    torch.save({"tokenizer": tokenizer_state(enc)}, tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["tokenizer"]  # plain data: loads without pickle
    assert json.loads(json.dumps(state)) == state
    enc2 = get_tokenizer(state)
    assert enc2.encode(TEXT + "<|endoftext|>", allowed_special="all") == enc.encode(TEXT + "<|endoftext|>", allowed_special="all")
    assert tokenizer_state(enc2) == state


def test_gpt2_state_is_a_dict_and_the_old_string_still_loads(tmp_path):
    torch = pytest.importorskip("torch")
    state = tokenizer_state(get_tokenizer("gpt2"))
    assert state == {"format": "tiktoken", "name": "gpt2"}
    torch.save({"new": state, "old": "gpt2"}, tmp_path / "ckpt.pt")  # checkpoints written before the dict form hold "gpt2"
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    new, old = get_tokenizer(ck["new"]), get_tokenizer(ck["old"])
    assert new is old and new.encode(TEXT) == old.encode(TEXT) and new.n_vocab == 50257
    assert as_tokenizer_state(ck["old"]) == ck["new"] == as_tokenizer_state(ck["new"])
