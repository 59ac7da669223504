"""`nanogpt-course chat` (serve.chat_cli): a conversation piped into stdin, streamed answers through the SFT template,
/reset, /quit, end of input, a context that overflows, and a checkpoint that is not there."""
import io, subprocess, sys

import pytest, tiktoken, torch

from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course import serve
from nanogpt_course.serve import SamplingParams, chat_loop
from nanogpt_course.sft import format_chat
from helpers import save_course_checkpoint


@pytest.fixture(scope="module")
def enc():
    return tiktoken.get_encoding("gpt2")


def tiny(enc, block_size=256):
    torch.manual_seed(0)
    return GPT(GPTConfig.from_preset("tiny", vocab_size=enc.n_vocab, block_size=block_size)).eval()


def greedy_answer(model, enc, messages, max_tokens):
    ids = enc.encode(format_chat(messages), allowed_special="all")
    out = model.generate(torch.tensor([ids]), max_tokens, temperature=0, eos_token_id=enc.eot_token)[0, len(ids):].tolist()
    return enc.decode(out[:out.index(enc.eot_token)] if enc.eot_token in out else out)


@pytest.fixture
def prompts(monkeypatch):
    "Every prompt the chat submits to its engine (token ids), recorded on the way in."
    seen, submit = [], serve.Engine.submit
    def recording_submit(engine, job):
        seen.append(job.prompt_ids)
        return submit(engine, job)
    monkeypatch.setattr(serve.Engine, "submit", recording_submit)
    return seen


def run_chat(checkpoint, stdin, *extra):
    code = "import sys; from nanogpt_course.serve import chat_cli; sys.exit(chat_cli(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "--checkpoint", str(checkpoint), *extra],
                          input=stdin, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, enc):
    model = tiny(enc)
    path = save_course_checkpoint(tmp_path_factory.mktemp("chat") / "sft.pt", model, enc, "sft")
    return path, model


def test_chat_cli_piped_conversation(checkpoint, enc):
    path, model = checkpoint
    r = run_chat(path, "What is the capital of France?\n/reset\nName a colour.\n/quit\nthis line is never read\n",
                 "--temperature", "0", "--max-tokens", "12")
    assert r.returncode == 0, r.stderr
    answers = [line for line in r.stdout.split("bot> ")[1:]]
    assert len(answers) == 2 and "(conversation cleared)" in r.stdout
    # the answers are the model's greedy continuations of the SFT template (after /reset: no history)
    first = greedy_answer(model, enc, [{"role": "user", "content": "What is the capital of France?"}], 12)
    second = greedy_answer(model, enc, [{"role": "user", "content": "Name a colour."}], 12)
    # each answer is exactly the greedy continuation, on its own line (nothing missing, nothing extra)
    assert first and second
    assert answers[0].split("\n")[0] == first and answers[1].split("\n")[0] == second
    assert "this line is never read" not in r.stdout


def test_chat_cli_eof_exits_and_sampling_is_seeded(checkpoint):
    path, _ = checkpoint
    a = run_chat(path, "Tell me a joke.\n", "--seed", "3", "--max-tokens", "10")
    b = run_chat(path, "Tell me a joke.\n", "--seed", "3", "--max-tokens", "10")
    assert a.returncode == 0 and b.returncode == 0, a.stderr
    assert a.stdout.count("bot> ") == 1 and a.stdout == b.stdout


def test_chat_cli_errors(tmp_path, checkpoint):
    r = run_chat(tmp_path / "missing.pt", "hi\n")
    assert r.returncode == 2 and "could not load" in r.stderr and "missing.pt" in r.stderr
    r = run_chat(checkpoint[0], "hi\n", "--temperature", "5")
    assert r.returncode == 2 and "temperature" in r.stderr


def test_history_reset_and_context_overflow(enc, prompts):
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=enc.n_vocab, block_size=96)).eval()
    out = io.StringIO()
    turns = ["First question here?", "Second one?", "/reset", "Third?", "/nonsense", "word " * 200, "Still there?",
             "alpha " * 30, "beta " * 30]
    rc = chat_loop(model, enc, SamplingParams(max_tokens=6, temperature=0), stdin=io.StringIO("\n".join(turns) + "\n"), stdout=out)
    text = out.getvalue()
    assert rc == 0
    p = [enc.decode(ids) for ids in prompts]
    assert len(p) == text.count("bot> ") == 6
    assert "First question here?" in p[1] and "Second one?" in p[1]  # the second turn sees the first
    assert "First question here?" not in p[2] and "Third?" in p[2]  # /reset forgot it
    assert "unknown command /nonsense" in text
    assert "shorten it" in text  # the 200-word message cannot fit in 96 tokens: refused, not crashed...
    assert "Third?" in p[3] and "Still there?" in p[3]  # ...and the conversation before it is kept
    assert "dropped the" in text and "Third?" not in p[5] and "beta" in p[5]  # the oldest turns make room for new ones
    assert all(len(ids) < 96 for ids in prompts)


def test_chat_cli_penalties(checkpoint, enc):
    "--presence-penalty and --frequency-penalty reach the sampler with OpenAI's definition; out of range is refused."
    path, model = checkpoint
    ids = enc.encode(format_chat([{"role": "user", "content": "Say it again and again."}]), disallowed_special=())
    out, counts = [], torch.zeros(enc.n_vocab)
    for _ in range(10):  # greedy with the penalties, the slow obvious way
        with torch.no_grad(): logits = model(torch.tensor([ids + out]))[0][0, -1, :enc.n_vocab]
        tok = int((logits - counts * 1.5 - (counts > 0).float() * 0.5).argmax())
        out.append(tok); counts[tok] += 1
    if enc.eot_token in out: out = out[:out.index(enc.eot_token)]
    r = run_chat(path, "Say it again and again.\n", "--temperature", "0", "--max-tokens", "10",
                 "--presence-penalty", "0.5", "--frequency-penalty", "1.5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("bot> ")[1] == enc.decode(out) + "\n"  # the whole answer, then the line break
    r = run_chat(path, "hi\n", "--frequency-penalty", "3")
    assert r.returncode == 2 and "--frequency-penalty must be in [-2, 2], got 3.0" in r.stderr, r.stderr
    assert r.stderr.startswith("usage:") and "nanogpt-course chat: error:" in r.stderr


def test_typed_endoftext_is_text(enc, prompts):
    "A user who types <|endoftext|> gets its characters into the prompt, never the control token (defect 7)."
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=enc.n_vocab, block_size=96)).eval()
    chat_loop(model, enc, SamplingParams(max_tokens=2, temperature=0), stdin=io.StringIO("end <|endoftext|> here\n"),
              stdout=io.StringIO())
    assert len(prompts) == 1 and enc.eot_token not in prompts[0] and "<|endoftext|>" in enc.decode(prompts[0])
