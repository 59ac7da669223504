"""A rehearsal of every recipe the README and the notebooks give for GPUs and real data (issue 11, section 1), on the CPU
and offline: the same commands, code paths and configuration (the `gpt2` preset with GPT-2's tokenizer and its vocabulary
padded to 50,304, the dtype policy, torch.compile, DDP under torchrun), with only the steps, the batch and the sequence
length made small. The data is real (the-verdict.txt and the Alpaca-format file of NANOGPT_COURSE_DATA) or written here
in the real schemas (HellaSwag, Dolly-15k). Tests marked `cuda` need a GPU and skip themselves without one.

The pretraining run is made once per module and each later stage starts from what the earlier one wrote, as a user's
session would: prepare -> pretrain (compiled, stopped after a step) -> --resume -> SFT (full and LoRA) -> eval -> serve,
chat, playground; beside it, the README's torchrun line on 2 processes in bfloat16, resumed on 1. The 124M-parameter checkpoints (1.5 GB each with the optimizer state) are deleted when the module ends."""
import io, json, math, os, re, signal, subprocess, sys, time
from pathlib import Path

import httpx, pytest, torch

from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.train import TRAIN_PRESETS, load_checkpoint, load_model, read_log, sample_text
from helpers import free_port, save_course_checkpoint

ROOT = Path(__file__).resolve().parents[1]
GPT2_VOCAB, PADDED_VOCAB = 50257, 50304  # GPT-2's tokenizer, and the `gpt2` preset's table (a multiple of 64)
# the README's and the preset's only departures from the real recipe: a small batch, short sequences, a few steps
SMALL = ["--batch-size", "2", "--seq-len", "32", "--total-batch-tokens", "64", "--max-steps", "2",
         "--sample-every", "1", "--eval-every", "1", "--eval-batches", "1", "--save-every", "1", "--device", "cpu", "--no-progress"]
CLI = [sys.executable, "-c", "import sys; from nanogpt_course.cli import main; sys.exit(main(sys.argv[1:]))"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]  # what the `torchrun` script runs, with this interpreter


def run(cmd: list, cwd, timeout: float = 900, input: str | None = None, what: str | None = None) -> subprocess.CompletedProcess:
    "Run a command; fail with its command line and the end of its output unless it exits 0."
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, input=input,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    shown = what or " ".join(str(c) for c in cmd)
    assert r.returncode == 0, f"`{shown}` exited {r.returncode}:\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-5000:]}"
    return r


def course(*args, cwd, **kw) -> subprocess.CompletedProcess:
    "`nanogpt-course ARGS` (the console script's `main`, with this interpreter)."
    return run([*CLI, *args], cwd, what="nanogpt-course " + " ".join(map(str, args)), **kw)


def last_json(stdout: str) -> dict:
    "The summary line `pretrain` prints last."
    return json.loads(stdout.strip().splitlines()[-1])


def strict_json(path) -> dict:
    "A JSON file the course wrote, refusing NaN and infinities (not JSON)."
    def bad(c): raise AssertionError(f"{path} holds {c}, which is not JSON")
    return json.loads(Path(path).read_text(), parse_constant=bad)


def finite(x) -> bool: return isinstance(x, (int, float)) and math.isfinite(x)


# ------------------------------------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def offline():
    "GPT-2's tokenizer from TIKTOKEN_CACHE_DIR and the course's offline data folder, or a failure that says how to get them."
    import tiktoken
    cache = os.environ.get("TIKTOKEN_CACHE_DIR")
    try: enc = tiktoken.get_encoding("gpt2")
    except Exception as e:
        pytest.fail(f"GPT-2's tokenizer does not load ({type(e).__name__}: {e}); TIKTOKEN_CACHE_DIR is {cache!r}. "
                    "Run `source scripts/env.sh` (it points TIKTOKEN_CACHE_DIR at ../shared/tiktoken_cache) or allow the network once.")
    data = Path(os.environ.get("NANOGPT_COURSE_DATA", "(NANOGPT_COURSE_DATA is not set)"))
    missing = [str(p) for p in (data / "the-verdict.txt", data / "alpaca-format-instructions.json") if not p.is_file()]
    if missing:  # `sft --data alpaca` reads the variable too, so it must be set, not guessed here
        pytest.fail(f"the course's offline data is missing ({', '.join(missing)}); run `source scripts/env.sh`, which sets "
                    "NANOGPT_COURSE_DATA to ../shared/data (see data/README.md)")
    return enc, data


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    "The user's working folder (commands run here with the README's relative paths); its checkpoints go when the module ends."
    d = tmp_path_factory.mktemp("rehearsal")
    yield d
    for p in d.rglob("*.pt"): p.unlink()


# four records in HellaSwag's own schema (rowanz/hellaswag jsonl): ActivityNet and WikiHow contexts, each label used
HELLASWAG = [
    dict(ind=24, activity_label="Roof shingle removal", ctx_a="A man is sitting on a roof.", ctx_b="he",
         ctx="A man is sitting on a roof. he", split="val", split_type="indomain", label=3,
         endings=["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.",
                  "starts pulling up roofing on a roof."], source_id="activitynet~v_-JhWjGDPHMY"),
    dict(ind=92, activity_label="Baking cookies", ctx_a="A woman puts a tray of dough into the oven.", ctx_b="she",
         ctx="A woman puts a tray of dough into the oven. she", split="val", split_type="indomain", label=0,
         endings=["waits for the cookies to bake and takes them out.", "swims across the lake with her dog.",
                  "paints the garage ceiling blue.", "drives a truck up a mountain."], source_id="activitynet~v_2Fd9x0mQp1A"),
    dict(ind=1011, activity_label="Home and Garden",
         ctx_a="[header] How to water a houseplant [title] Check the soil. [step] Push a finger into the soil.",
         ctx_b="if it feels dry", ctx="[header] How to water a houseplant [title] Check the soil. [step] Push a finger "
         "into the soil. if it feels dry", split="val", split_type="zeroshot", label=1,
         endings=["bake the plant at a high heat for an hour.", "pour water slowly until it runs out of the pot's base.",
                  "paint the leaves with a bright colour.", "sell the plant to a neighbour."], source_id="wikihow~16821"),
    dict(ind=2047, activity_label="Walking the dog", ctx_a="A man holds a leash tied to a small dog.", ctx_b="the dog",
         ctx="A man holds a leash tied to a small dog. the dog", split="val", split_type="indomain", label=2,
         endings=["reads a newspaper on the couch.", "bakes a cake for the party.", "pulls him down the path toward the park.",
                  "plays the piano in a concert hall."], source_id="activitynet~v_8Lk2q9ZzYwE"),
]

# Dolly-15k's schema (databricks/databricks-dolly-15k): instruction, context, response, category
DOLLY = [dict(instruction=f"Name a {thing}.", context="", response=f"One {thing} is {answer}.", category="brainstorming")
         for thing, answer in [("colour", "blue"), ("fruit", "an apple"), ("planet", "Mars"), ("metal", "iron")]] + \
        [dict(instruction="Summarise the passage in one sentence.", context=ctx, response=summary, category="summarization")
         for ctx, summary in [("The river rose after a week of rain and flooded the lower fields.", "Rain flooded the fields."),
                              ("The shop opened at nine and sold out of bread by noon.", "The bread sold out by noon."),
                              ("The team trained all winter and won the spring league.", "Winter training won the league."),
                              ("The old bridge was closed for repairs until June.", "The bridge is closed until June.")]] + \
        [dict(instruction=q, context="", response=a, category="open_qa")
         for q, a in [("What is the capital of France?", "Paris."), ("How many legs does a spider have?", "Eight."),
                      ("What do bees make?", "Honey."), ("What is frozen water called?", "Ice.")]]


@pytest.fixture(scope="module")
def inputs(work, offline):
    "The files a user would bring: a HellaSwag-format jsonl and a Dolly-format jsonl, in the real schemas."
    (work / "hellaswag_val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HELLASWAG))
    (work / "dolly.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DOLLY))
    return work / "hellaswag_val.jsonl", work / "dolly.jsonl"


@pytest.fixture(scope="module")
def shards(work, offline):
    "`nanogpt-course prepare TEXT --out data/verdict --tokenizer gpt2`: real text, GPT-2's tokenizer."
    _, data = offline
    r = course("prepare", data / "the-verdict.txt", "--out", "data/verdict", "--tokenizer", "gpt2",
               "--val-tokens", "512", "--shard-tokens", "4096", cwd=work, timeout=300)
    return work / "data" / "verdict", r


def test_prepare_with_gpt2_tokenizer(shards, offline):
    d, r = shards
    meta = strict_json(d / "meta.json")
    assert meta["tokenizer"] == {"format": "tiktoken", "name": "gpt2"} and meta["vocab_size"] == GPT2_VOCAB and meta["eot"] == offline[0].eot_token
    assert meta["complete"] and meta["total_tokens"] > 4096 and "tokens" in r.stdout
    assert sorted(p.name for p in d.glob("*.bin")) == sorted(s["file"] for s in meta["shards"])


def test_own_tokenizer_then_small_preset(work, offline):
    "README: `tokenizer train --input corpus.txt --vocab-size 4096 --out tok.json`, shards made with it, `pretrain --preset small`."
    _, data = offline
    course("tokenizer", "train", "--input", data / "tinyshakespeare.txt", "--vocab-size", "4096", "--out", "tok.json",
           cwd=work, timeout=600)
    course("prepare", data / "tinyshakespeare.txt", "--out", "data/shakespeare", "--tokenizer", "tok.json", cwd=work, timeout=600)
    assert strict_json(work / "data" / "shakespeare" / "meta.json")["vocab_size"] == 4096
    r = course("pretrain", "--preset", "small", "--data", "data/shakespeare", "--out", "runs/shakespeare", *SMALL,
               cwd=work, timeout=600)
    assert last_json(r.stdout)["steps"] == 2
    recs = read_log(work / "runs" / "shakespeare")
    assert any(x.get("sample") for x in recs if x["step"] == 0) and any(finite(x.get("val_loss")) for x in recs)
    assert load_checkpoint(work / "runs" / "shakespeare" / "ckpt_0000002.pt")["config"]["vocab_size"] == 4096


@pytest.fixture(scope="module")
def tiny_run(work, offline):
    "A small course checkpoint with GPT-2's tokenizer, for the commands below whose model does not matter."
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=PADDED_VOCAB))
    return save_course_checkpoint(work / "runs" / "tiny" / "ckpt_0000001.pt", model, offline[0]).parent


NETWORK_COMMANDS = {  # the README's commands that need the network: what each must name when it cannot reach it
    "fineweb-edu": (["prepare", "fineweb-edu", "--out", "data/edu_fineweb10B"], "fineweb-edu"),
    "dolly": (["sft", "--init", "runs/tiny", "--data", "dolly", "--out", "runs/sft-dolly"], "databricks-dolly-15k"),
    "hellaswag": (["eval", "hellaswag", "--model", "runs/tiny", "--no-progress"], "hellaswag_val.jsonl"),
    "gpt2 weights": (["eval", "hellaswag", "--model", "gpt2", "--data", "hellaswag_val.jsonl", "--no-progress"], "model.safetensors"),
}


@pytest.mark.parametrize("name", list(NETWORK_COMMANDS))
def test_network_commands_offline_end_in_one_sentence(name, work, tiny_run, inputs, tmp_path):
    "With the network cut (and no caches), each ends in one sentence naming what to download, never a traceback."
    args, names = NETWORK_COMMANDS[name]
    dead = "http://127.0.0.1:9"  # nothing listens there: every connection is refused at once
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "NANOGPT_COURSE_CACHE": str(tmp_path / "cache"), "NANOGPT_COURSE_DATA": str(tmp_path / "no-data"),
           **{k: dead for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")}, "no_proxy": "", "NO_PROXY": ""}
    r = subprocess.run([*CLI, *args], cwd=work, capture_output=True, text=True, timeout=300, env=env)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode != 0 and "Traceback" not in r.stderr and lines, (r.returncode, r.stderr[-3000:])
    last = lines[-1]
    assert last.startswith(f"nanogpt-course {args[0]}: error: ") and "download" in last and names in last.lower(), last
    assert not (work / "runs" / "sft-dolly").exists() and not (work / "data" / "edu_fineweb10B" / "meta.json").exists()


# ------------------------------------------------------------------------------------------------------- pretraining
def gpt2_params(vocab_size: int) -> int:
    "The `gpt2` preset's parameter count (tied head once), counted on the meta device: no memory, no time."
    with torch.device("meta"):
        return GPT(GPTConfig.from_preset("gpt2", vocab_size=vocab_size)).num_params()


@pytest.fixture(scope="module")
def gpt2_run(work, shards, inputs):
    "`pretrain --preset gpt2` as the preset says (torch.compile on), with the HellaSwag hook; stopped after step 1 of 2."
    hs, _ = inputs
    r = course("pretrain", "--preset", "gpt2", "--data", "data/verdict", "--out", "runs/gpt2", *SMALL,
               "--hellaswag-every", "1", "--hellaswag", hs.name, "--stop-after", "1", cwd=work, timeout=1800)
    return work / "runs" / "gpt2", r


@pytest.fixture(scope="module")
def gpt2_resumed(gpt2_run, work, inputs):
    "The same command with --resume (eager: compile is not part of what a resumed run must share)."
    out, first = gpt2_run
    hs, _ = inputs
    r = course("pretrain", "--preset", "gpt2", "--data", "data/verdict", "--out", "runs/gpt2", *SMALL,
               "--hellaswag-every", "1", "--hellaswag", hs.name, "--resume", "--no-compile", cwd=work, timeout=1200)
    return out, first, r


def check_hooks_at(recs: list, step: int, n_hellaswag: int = len(HELLASWAG)):
    "The log has, at `step`, a finite validation loss, the HellaSwag-format result and a non-empty sample."
    at = [r for r in recs if r.get("step") == step]
    val = [r["val_loss"] for r in at if "val_loss" in r]
    assert len(val) == 1 and finite(val[0]) and 5 < val[0] < 15, (step, at)  # untrained: about ln(50304) = 10.8
    hs = [r for r in at if "hellaswag_acc" in r]
    assert len(hs) == 1 and hs[0]["hellaswag_n"] == n_hellaswag and 0 <= hs[0]["hellaswag_acc_norm"] <= 1, (step, at)
    samples = [r["sample"] for r in at if "sample" in r]
    assert len(samples) == 1 and isinstance(samples[0], str) and samples[0].strip(), (step, at)


def test_pretrain_gpt2_preset_as_is(gpt2_run):
    "Step 0's sample, validation loss and HellaSwag-format score, a compiled step, a checkpoint of the padded 124M model."
    out, r = gpt2_run
    assert "1 process(es) on cpu" in r.stdout and "steps 0->2" in r.stdout
    assert f"{gpt2_params(PADDED_VOCAB):,} parameters" in r.stdout
    s = last_json(r.stdout)
    assert s["steps"] == 1 and finite(s["train_loss"]) and finite(s["val_loss"])
    assert strict_json(out / "summary.json")["stopped_early"] is True
    recs = read_log(out)
    check_hooks_at(recs, 0)
    assert [r["step"] for r in recs if "loss" in r] == [0]
    ck = load_checkpoint(out / "ckpt_0000001.pt")
    tc = ck["train_config"]
    assert tc["model"] == "gpt2" and tc["compile"] is True and tc["dtype"] == "auto" and tc["vocab_size"] == PADDED_VOCAB
    assert ck["config"]["vocab_size"] == PADDED_VOCAB and ck["tokenizer"] == {"format": "tiktoken", "name": "gpt2"}
    assert ck["model"]["transformer.wte.weight"].shape == (PADDED_VOCAB, 768)  # the 47 padding rows are really there
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ck["model"])  # saved from the uncompiled module
    # the same model as the README's `GPT(GPTConfig.from_preset("gpt2"))`, its table padded by the preset
    assert gpt2_params(PADDED_VOCAB) - gpt2_params(GPT2_VOCAB) == (PADDED_VOCAB - GPT2_VOCAB) * 768
    assert gpt2_params(GPT2_VOCAB) == 124_439_808  # OpenAI's GPT-2 124M (notebook 03)


def test_pretrain_resume_continues_the_run(gpt2_resumed):
    out, first, r = gpt2_resumed
    assert "resuming from" in r.stdout and "ckpt_0000001.pt at step 1" in r.stdout and "steps 1->2" in r.stdout
    s = last_json(r.stdout)
    assert s["steps"] == 2 and s["tokens"] == 128 and finite(s["val_loss"])
    recs = read_log(out)
    assert [r["step"] for r in recs if "loss" in r] == [0, 1]  # each step once: the stopped run's extra records dropped
    check_hooks_at(recs, 0)
    check_hooks_at(recs, 1)
    ck = load_checkpoint(out / "ckpt_0000002.pt")
    assert ck["step"] == 2 and ck["tokens"] == 128 and ck["config"]["vocab_size"] == PADDED_VOCAB
    summary = strict_json(out / "summary.json")
    assert summary["steps"] == 2 and summary["stopped_early"] is False


def readme_launch() -> list[str]:
    "What the README's torchrun line launches (`-m MODULE [COMMAND]`, between `--nproc_per_node N` and `--preset gpt2`)."
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"torchrun --standalone --nproc_per_node \d+ (-m .+?) --preset gpt2 ", line)
        if m: return m.group(1).split()
    pytest.fail("README.md has no `torchrun --standalone --nproc_per_node N -m ... --preset gpt2 ...` line to rehearse")


@pytest.fixture(scope="module")
def ddp_run(work, shards, inputs):
    """The README's launch line, `torchrun --standalone --nproc_per_node N -m nanogpt_course.train --preset gpt2 ...`, N=2 (gloo),
    in bfloat16: what `--dtype auto` picks on the GPUs that line is for (autocast runs on a CPU too)."""
    flags = [*SMALL, "--total-batch-tokens", "128", "--no-compile", "--stop-after", "1", "--dtype", "bfloat16",  # 2 ranks x 2x32 tokens
             "--hellaswag-every", "1", "--hellaswag", inputs[0].name]
    r = run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", *readme_launch(), "--preset", "gpt2",
             "--data", "data/verdict", "--out", "runs/gpt2-ddp", *flags], work, timeout=1800)
    return work / "runs" / "gpt2-ddp", flags, r


def test_torchrun_two_processes_bfloat16(ddp_run):
    out, _, r = ddp_run
    assert "no HellaSwag evaluator" not in r.stdout + r.stderr  # the README's launch line keeps the preset's evaluation
    assert "2 process(es) on cpu" in r.stdout and "x 1 accumulation x 2 = 128 tokens/step" in r.stdout
    s = last_json(r.stdout)
    assert s["steps"] == 1 and finite(s["train_loss"]) and finite(s["val_loss"])
    recs = read_log(out)
    assert [x["step"] for x in recs if "loss" in x] == [0]
    check_hooks_at(recs, 0)  # validation and HellaSwag-format scoring split across the 2 ranks, the sample on rank 0
    ck = load_checkpoint(out / "ckpt_0000001.pt")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and ck["config"]["vocab_size"] == PADDED_VOCAB
    assert ck["train_config"]["dtype"] == "bfloat16"
    assert not any(k.startswith("module.") for k in ck["model"])
    assert {v.dtype for v in ck["model"].values()} == {torch.float32}  # autocast computes in bf16, the weights stay float32


def test_torchrun_run_resumed_with_one_process(ddp_run, work):
    "A run started on 2 ranks continues on 1: the same 128 tokens a step, now by 2 micro-steps of accumulation."
    out, flags, _ = ddp_run
    r = course("pretrain", "--preset", "gpt2", "--data", "data/verdict", "--out", "runs/gpt2-ddp", *flags, "--resume",
               cwd=work, timeout=1200)
    assert "resuming from" in r.stdout and "1 process(es) on cpu" in r.stdout and "x 2 accumulation x 1 = 128" in r.stdout
    s = last_json(r.stdout)
    assert s["steps"] == 2 and s["tokens"] == 256 and finite(s["train_loss"])
    assert [x["step"] for x in read_log(out) if "loss" in x] == [0, 1]
    assert load_checkpoint(out / "ckpt_0000002.pt")["world_size"] == 1


# --------------------------------------------------------------------------------------------- padded vocabulary
@pytest.fixture(scope="module")
def padding_favoured(gpt2_resumed):
    "The pretrained gpt2-preset model, changed so that its 47 padding ids are by far the most likely next tokens."
    out, _, _ = gpt2_resumed
    model, enc = load_model(out)
    assert model.config.vocab_size == PADDED_VOCAB and enc.n_vocab == GPT2_VOCAB
    assert model.lm_head.weight is model.transformer.wte.weight  # tied: the padding rows are output rows too
    with torch.no_grad():
        # ln_f's output has zero mean over its features, so a bias of 1 adds n_embd to h . 1: the padding logits get ~7,680
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[GPT2_VOCAB:] = 10.0
    return model, enc


def test_padding_ids_are_never_sampled(padding_favoured):
    "Every generation path (training's samples, SFT answers, the server, the chat, the playground) keeps to the tokenizer's ids."
    from nanogpt_course.serve import SamplingParams, ServerThread, chat_loop, create_app
    from nanogpt_course.sft import generate_response
    model, enc = padding_favoured
    idx = torch.tensor([enc.encode("The house was")])
    raw = model.generate(idx, 4, temperature=1.0, top_k=50)[0, idx.shape[1]:].tolist()
    assert all(t >= GPT2_VOCAB for t in raw)  # the instrument works: unrestricted sampling picks only padding ids
    with pytest.raises(KeyError): enc.decode(raw)  # ... which tiktoken cannot decode (the old crash at step 0)
    for seed in range(3):
        assert isinstance(sample_text(model, enc, "\n", 8, "cpu", seed=seed), str)  # pretraining's sample
    assert isinstance(generate_response(model, enc, "Name a colour.", max_new_tokens=6, temperature=1.0, top_k=50, seed=0), str)
    out = io.StringIO()
    assert chat_loop(model, enc, SamplingParams(max_tokens=6, temperature=1.0, top_k=50, seed=0),
                     stdin=io.StringIO("Hello\n"), stdout=out) == 0
    assert out.getvalue().count("bot> ") == 1
    with ServerThread(create_app({"padded": (model, enc)}, max_queue=8, default_model="padded")) as s:
        for body in ({"prompt": "The house was", "max_tokens": 6, "seed": 0},
                     {"prompt": "The house was", "max_tokens": 6, "seed": 1, "stream": True}):
            r = httpx.post(s.url + "/v1/completions", json=body, timeout=120)
            assert r.status_code == 200, r.text
        r = httpx.post(s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6},
                       timeout=120)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1, r.text
    from nanogpt_course.playground import playground
    app = playground({"padded": (model, enc)}, gpt2=False, max_tokens=6, temperature=1.0, prompt="The house was").app
    app.generate_button.click()
    assert app.wait(120) and app.last_error is None, app.status.value
    assert len(app.steps[0]) == 6 and all(st.id < GPT2_VOCAB for st in app.steps[0])


# ----------------------------------------------------------------------------------------------------------- SFT
@pytest.fixture(scope="module")
def sft_full(gpt2_resumed, work, inputs):
    "README: `nanogpt-course sft --init runs/<pretraining run> --data dolly --out runs/sft`, with a Dolly-schema file."
    _, dolly = inputs
    r = course("sft", "--init", "runs/gpt2", "--data", dolly.name, "--out", "runs/sft", "--steps", "2", "--batch-size", "2",
               "--val-frac", "0.25", "--eval-batches", "1", "--no-progress", cwd=work, timeout=1200)
    return work / "runs" / "sft", r


@pytest.fixture(scope="module")
def sft_lora(gpt2_resumed, work, offline):
    "LoRA fine-tuning on the course's offline Alpaca-format file (`--data alpaca`)."
    r = course("sft", "--init", "runs/gpt2", "--data", "alpaca", "--out", "runs/sft-lora", "--lora-r", "4", "--steps", "2",
               "--batch-size", "2", "--eval-batches", "1", "--no-progress", cwd=work, timeout=1200)
    return work / "runs" / "sft-lora", r


def sft_val_losses(stdout: str) -> tuple[float, float]:
    line = next(l for l in stdout.splitlines() if l.startswith("val loss on response tokens:"))
    before, after = line.split(":", 1)[1].split(" in ")[0].split("->")
    return float(before), float(after)


def test_sft_full(sft_full, gpt2_resumed):
    out, r = sft_full
    assert all(finite(v) for v in sft_val_losses(r.stdout))
    assert "split: train" in r.stdout and "data:" in r.stdout
    ck = load_checkpoint(out / "sft.pt")
    base = load_checkpoint(gpt2_resumed[0] / "ckpt_0000002.pt")["model"]
    assert ck["kind"] == "sft" and ck["config"]["vocab_size"] == PADDED_VOCAB
    assert ck["model"]["transformer.wte.weight"].shape == (PADDED_VOCAB, 768)
    changed = {k for k, v in ck["model"].items() if not torch.equal(v, base[k])}
    assert any("mlp" in k for k in changed) and any("c_attn" in k for k in changed)  # every layer trains
    s = strict_json(out / "summary.json")
    assert s["steps"] == 2 and s["kind"] == "sft"


def test_sft_lora(sft_lora, gpt2_resumed):
    out, r = sft_lora
    assert all(finite(v) for v in sft_val_losses(r.stdout))
    ck = load_checkpoint(out / "sft.pt")
    base = load_checkpoint(gpt2_resumed[0] / "ckpt_0000002.pt")["model"]
    assert set(ck["model"]) == set(base)  # the adapters are merged into plain weights
    changed = {k for k, v in ck["model"].items() if not torch.equal(v, base[k])}
    assert changed and all(k.endswith("attn.c_attn.weight") for k in changed), sorted(changed)  # only LoRA's targets
    assert strict_json(out / "summary.json")["steps"] == 2


# ------------------------------------------------------------------------------------------ evaluate, serve, chat
def test_eval_hellaswag(sft_full, work, inputs):
    "README: `nanogpt-course eval hellaswag --model runs/sft`, on a file in HellaSwag's schema."
    hs, _ = inputs
    r = course("eval", "hellaswag", "--model", "runs/sft", "--data", hs.name, "--json", "eval/hellaswag.json",
               "--no-progress", cwd=work, timeout=900)
    assert f"{len(HELLASWAG)} examples" in r.stdout
    res = strict_json(work / "eval" / "hellaswag.json")
    assert res["n"] == len(HELLASWAG) and 0 <= res["acc"] <= 1 and 0 <= res["acc_norm"] <= 1


def sse_text(resp: httpx.Response, chat: bool) -> str:
    "The text of a streamed answer; asserts the stream is well formed and ends with [DONE]."
    events = [l[len("data: "):] for l in resp.text.splitlines() if l.startswith("data: ")]
    assert events and events[-1] == "[DONE]", resp.text[-500:]
    chunks = [json.loads(e) for e in events[:-1]]
    return "".join((c["choices"][0]["delta"].get("content") or "") if chat else c["choices"][0]["text"]
                   for c in chunks if c.get("choices"))


def test_serve_the_result(sft_full, gpt2_resumed, work):
    "README: `nanogpt-course serve --checkpoint runs/sft --base runs/<pretraining run>`, then the OpenAI API, streamed too."
    port = free_port()
    proc = subprocess.Popen([*CLI, "serve", "--checkpoint", "runs/sft", "--base", "runs/gpt2", "--port", str(port)], cwd=work,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try: health = httpx.get(url + "/health", timeout=5).json(); break
            except httpx.TransportError:
                assert proc.poll() is None, f"`nanogpt-course serve` exited {proc.returncode}:\n{proc.stdout.read()[-3000:]}"
                assert time.monotonic() - t0 < 600, "`nanogpt-course serve` did not answer /health within 600 s"
                time.sleep(1)
        assert len(health["models"]) == 2, health
        models = httpx.get(url + "/v1/models", timeout=10).json()["data"]
        assert {m["context_length"] for m in models} == {1024}
        for name in health["models"]:
            body = {"model": name, "prompt": "The house was", "max_tokens": 8, "seed": 0}
            r = httpx.post(url + "/v1/completions", json=body, timeout=300)
            assert r.status_code == 200, r.text
            j = r.json()
            assert j["model"] == name and j["usage"]["completion_tokens"] >= 1 and j["choices"][0]["text"], j
            r = httpx.post(url + "/v1/completions", json={**body, "stream": True}, timeout=300)
            assert r.status_code == 200 and sse_text(r, chat=False) == j["choices"][0]["text"]  # the same seed, the same text
            chat = {"model": name, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8, "seed": 0}
            r = httpx.post(url + "/v1/chat/completions", json=chat, timeout=300)
            assert r.status_code == 200, r.text
            j = r.json()
            assert j["choices"][0]["message"]["role"] == "assistant" and j["usage"]["completion_tokens"] >= 1, j
            r = httpx.post(url + "/v1/chat/completions", json={**chat, "stream": True}, timeout=300)
            assert r.status_code == 200 and sse_text(r, chat=True) == j["choices"][0]["message"]["content"]
        page = httpx.get(url + "/", timeout=10)
        assert page.status_code == 200 and "<textarea" in page.text
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGTERM)
        try: out = proc.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL); out = proc.communicate()[0]
    assert "web page:" in out and f"127.0.0.1:{port}" in out


def test_chat_the_result(sft_lora, work):
    "README: `nanogpt-course chat --checkpoint runs/sft`, a conversation piped into stdin."
    r = course("chat", "--checkpoint", "runs/sft-lora", "--max-tokens", "8", "--seed", "0", cwd=work, timeout=600,
               input="Give three tips for staying healthy.\n/reset\nWhat is the capital of France?\n/quit\n")
    answers = r.stdout.split("bot> ")[1:]
    assert len(answers) == 2 and "(conversation cleared)" in r.stdout, r.stdout
    assert "Traceback" not in r.stderr


def test_playground_loads_the_result(sft_full, gpt2_resumed, work, monkeypatch):
    "README: `nanogpt-course playground --checkpoint runs/sft/sft.pt`, then the app base vs fine-tuned, as that command says."
    from nanogpt_course.playground import CHECKPOINTS_ENV, playground
    r = course("playground", "--checkpoint", "runs/sft/sft.pt", "--checkpoint", "runs/gpt2", cwd=work, timeout=300)
    line = next(l for l in r.stdout.splitlines() if CHECKPOINTS_ENV + "=" in l)
    monkeypatch.setenv(CHECKPOINTS_ENV, line.split(CHECKPOINTS_ENV + "=", 1)[1].split()[0])
    monkeypatch.chdir(work)
    app = playground(gpt2=False, max_tokens=6, temperature=0.0, prompt="Name a colour.", mode="instruction").app
    sft = next(k for k in app.choices if k.endswith("sft.pt"))
    base = next(k for k in app.choices if k.endswith("ckpt_0000002.pt"))
    app.model_a.value, app.model_b.value = sft, base
    app.generate_button.click()
    assert app.wait(300) and app.last_error is None, app.status.value
    assert len(app.steps[0]) >= 1 and len(app.steps[1]) >= 1
    assert app.get_model(sft)[0].config.vocab_size == PADDED_VOCAB


# ------------------------------------------------------------------------------------------------ GPT-2's sizes
OPENAI_MILLIONS = {"gpt2": 124, "gpt2-medium": 355, "gpt2-large": 774, "gpt2-xl": 1558}  # the sizes OpenAI published


def test_pretrain_offers_every_gpt2_size(capsys):
    from nanogpt_course.train import cli
    assert set(OPENAI_MILLIONS) <= set(TRAIN_PRESETS)
    with pytest.raises(SystemExit) as e: cli(["--help"])
    assert e.value.code == 0
    choices = capsys.readouterr().out.split("--preset {", 1)[1].split("}", 1)[0].split(",")
    assert set(OPENAI_MILLIONS) <= set(choices)


def test_gpt2_sizes_have_openais_parameter_counts():
    "Our four GPT-2 sizes with GPT-2's 50,257 tokens count what Hugging Face's GPT-2 counts: OpenAI's 124M ... 1558M."
    from transformers import GPT2Config, GPT2LMHeadModel
    for name, millions in OPENAI_MILLIONS.items():
        c = GPTConfig.from_preset(name)
        with torch.device("meta"):  # shapes without memory
            ours = GPT(c).num_params()
            hf = sum(p.numel() for p in GPT2LMHeadModel(GPT2Config(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd)).parameters())
        assert c.vocab_size == GPT2_VOCAB and ours == hf and round(ours / 1e6) == millions, (name, ours, hf)


@pytest.mark.parametrize("name", ["gpt2-medium", "gpt2-large", "gpt2-xl"])  # gpt2 itself: pretrained above
def test_gpt2_size_builds_and_trains_a_step(name):
    "Each larger size as `pretrain --preset NAME` builds it (vocabulary padded to 50,304): one forward and backward pass on (1, 8)."
    c = GPTConfig.from_preset(TRAIN_PRESETS[name]["model"], vocab_size=TRAIN_PRESETS[name]["vocab_size"])
    with torch.device("meta"): n_gpt2_vocab = GPT(GPTConfig.from_preset(name)).num_params()
    torch.manual_seed(0)
    model = GPT(c)  # GPT-2's initialisation, at full size (gpt2-xl: 6.2 GB of weights, as much again of gradients)
    assert c.vocab_size == PADDED_VOCAB and model.num_params() == n_gpt2_vocab + (PADDED_VOCAB - GPT2_VOCAB) * c.n_embd
    x = torch.randint(0, GPT2_VOCAB, (1, 9))
    _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward()
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(PADDED_VOCAB)) < 1.0  # ~uniform at initialisation
    assert all(p.grad is not None for p in model.parameters())
    assert all(torch.isfinite(p.grad).all() for p in (model.transformer.wte.weight, model.transformer.h[-1].mlp.c_proj.weight))
    del model, loss


# ------------------------------------------------------------------------------------------------ GPU only
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fused_adamw_step():
    "configure_optimizer picks the fused AdamW kernel on CUDA, and a bf16-autocast step of the gpt2 preset runs with it."
    from nanogpt_course.train import configure_optimizer, make_config
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2", vocab_size=PADDED_VOCAB)).cuda()
    opt = configure_optimizer(model, make_config("gpt2"), "cuda")
    assert opt.defaults["fused"] is True
    x = torch.randint(0, GPT2_VOCAB, (4, 129), device="cuda")
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    with torch.autocast("cuda", dtype=torch.bfloat16): _, loss = model(x[:, :-1], x[:, 1:])
    loss.backward(); opt.step()
    assert math.isfinite(loss.item()) and not torch.equal(before, model.transformer.h[0].attn.c_attn.weight)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_flash_attention_through_sdpa():
    "Training's attention (is_causal, no mask) runs on the flash kernel in bf16, and agrees with the math kernel."
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("gpt2", vocab_size=PADDED_VOCAB)).cuda().eval()
    x = torch.randint(0, GPT2_VOCAB, (2, 1024), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION): flash, _ = model(x)  # "No available kernel" if flash cannot run
        with sdpa_kernel(SDPBackend.MATH): math_, _ = model(x)
    torch.testing.assert_close(flash.float(), math_.float(), atol=0.1, rtol=0.05)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_pretrain_bf16_compile(work, shards, inputs):
    "The preset as a GPU runs it: `--device cuda`, dtype auto (bf16 autocast), torch.compile, fused AdamW, MFU in the log."
    r = course("pretrain", "--preset", "gpt2", "--data", "data/verdict", "--out", "runs/gpt2-cuda", "--device", "cuda",
               "--batch-size", "4", "--seq-len", "256", "--total-batch-tokens", "1024", "--max-steps", "3", "--n-layer", "2",
               "--sample-every", "2", "--eval-every", "2", "--eval-batches", "1", "--save-every", "3", "--no-progress",
               "--hellaswag-every", "2", "--hellaswag", inputs[0].name, cwd=work, timeout=600)
    assert "on cuda" in r.stdout and last_json(r.stdout)["steps"] == 3
    recs = read_log(work / "runs" / "gpt2-cuda")
    assert any(x.get("sample") for x in recs if x["step"] == 0)
    if any(k.lower() in torch.cuda.get_device_name().lower() for k in ("H100", "H200", "A100")):
        assert all(0 < x["mfu"] < 1 for x in recs if "loss" in x)
    ck = load_checkpoint(work / "runs" / "gpt2-cuda" / "ckpt_0000003.pt")
    assert ck["train_config"]["compile"] is True and ck["config"]["vocab_size"] == PADDED_VOCAB


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_cuda_nccl_ddp_two_gpus(work, shards, inputs):
    "The README's torchrun line on 2 GPUs (NCCL)."
    r = run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", *readme_launch(), "--preset", "gpt2",
             "--data", "data/verdict", "--out", "runs/gpt2-nccl", "--batch-size", "4", "--seq-len", "128",
             "--total-batch-tokens", "1024", "--max-steps", "2", "--n-layer", "2", "--no-compile", "--eval-every", "1",
             "--eval-batches", "2", "--sample-every", "0", "--hellaswag-every", "1", "--hellaswag", inputs[0].name,
             "--no-progress"], work, timeout=600)
    assert "2 process(es) on cuda:0" in r.stdout and last_json(r.stdout)["steps"] == 2
    assert load_checkpoint(work / "runs" / "gpt2-nccl" / "ckpt_0000002.pt")["world_size"] == 2
