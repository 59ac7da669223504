"""The main job (nanogpt_course.pipeline, notebook 09): the training schedules end inside the time budget on a machine
slower than its timing probe promised, a stage cut by the time limit says so, and the whole job runs end to end.
Self-contained: a small corpus and a 300-token BPE made here; a busy machine is a monkeypatched slow optimizer step."""
import json, random, re, time
from pathlib import Path
import pytest

from nanogpt_course import pipeline as P, sft as S, train as T
from nanogpt_course.data import prepare
from nanogpt_course.tokenizer import BPETokenizer

# a tiny model and batch: each step takes a few ms before the slowdown
TINY = dict(preset="tiny", n_embd=32, batch_size=4, seq_len=32, total_batch_tokens=128, progress=False)


def _corpus(n: int = 600) -> list[str]:
    rnd = random.Random(0)
    words = "the cat sat on a mat while some dog ran to its home and every bird sang in morning light".split()
    return [" ".join(rnd.choice(words) for _ in range(rnd.randint(20, 120))) + "." for _ in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "Shards of the small corpus, tokenized with a 300-token BPE trained here."
    d = tmp_path_factory.mktemp("pipeline")
    docs = _corpus()
    BPETokenizer.train("\n".join(docs[:300]), 300).save(d / "tok.json")
    prepare(docs, d / "data", tokenizer=d / "tok.json", shard_tokens=30_000, val_tokens=4_000, num_proc=1, progress=False)
    # a few steps of pretraining, to instruction-tune from; it also pays the one-off imports (matplotlib, ...) before
    # the budgets below start counting
    T.pretrain(str(d / "data"), out_dir=str(d / "base"), max_steps=4, warmup_steps=1, **TINY)
    return d


class SlowSteps:
    "Every optimizer step of the training loops takes `seconds` longer (the timing probe's steps do not): a busy machine."
    def __init__(self, monkeypatch, seconds: float, after: int = 0):
        self.seconds, self.after, self.calls = seconds, after, 0  # the first `after` steps keep their speed
        real = T.configure_optimizer
        def configure(*a, **k):
            opt = real(*a, **k)
            step = opt.step
            def slow_step(*a, **k):
                self.calls += 1
                if self.calls > self.after: time.sleep(self.seconds)
                return step(*a, **k)
            opt.step = slow_step
            return opt
        monkeypatch.setattr(T, "configure_optimizer", configure)
        monkeypatch.setattr(S, "configure_optimizer", configure)  # sft imported it by name


def _lrs(log_path: Path) -> list[float]:
    return [r["lr"] for r in map(json.loads, Path(log_path).read_text().splitlines()) if "lr" in r]


def test_pretraining_replans_a_slow_run_so_its_schedule_ends(data, monkeypatch, capsys):
    "A first plan 10x too long for the budget: the run re-plans from the pace it measures, and its last step ends the cosine."
    SlowSteps(monkeypatch, 0.04)  # the sleep outweighs the computing, so a busy test machine moves the pace little
    r = P.pretrain_in_budget(str(data / "data"), str(data / "slow"), seconds=8, steps=2000, replan_at=(0.5,), **TINY)
    assert r["replanned"], "a plan 10x too long was not re-planned"
    assert r["cut"] is None and r["steps"] == r["schedule_steps"] < 2000
    cfg = T.TrainConfig(**T.load_checkpoint(r["checkpoint"])["train_config"])
    assert cfg.max_steps == r["steps"]
    lrs = _lrs(data / "slow" / "log.jsonl")
    assert len(lrs) == r["steps"]
    assert lrs[-1] == pytest.approx(T.get_lr(r["steps"] - 1, cfg))  # the last step ran at the end of the schedule
    assert lrs[-1] < 0.2 * cfg.lr  # near its floor (min_lr_ratio), far below the peak
    out = capsys.readouterr().out
    assert f"pretraining re-planned at step {r['replanned'][0]['at_step']}: 2000 -> {r['replanned'][0]['to']} steps" in out
    assert all(k in r["replanned"][0] for k in ("from", "to", "at_step", "why"))


def test_pretraining_cut_by_the_time_limit_says_so(data, monkeypatch, capsys):
    "The machine becomes far slower after the last re-plan: the run stops at its time limit and says it was cut."
    slow = SlowSteps(monkeypatch, 0.0)
    real = P.replan_checkpoint
    def replan_then_slow_down(*a, **k):
        res = real(*a, **k); slow.seconds = 1.0
        return res
    monkeypatch.setattr(P, "replan_checkpoint", replan_then_slow_down)
    r = P.pretrain_in_budget(str(data / "data"), str(data / "cut"), seconds=3, steps=5000, replan_at=(), **TINY)
    assert r["replanned"] and r["steps"] < r["schedule_steps"]
    assert r["cut"] == (f"the time limit stopped it at step {r['steps']} of {r['schedule_steps']}, "
                        "before its learning-rate schedule ended")
    assert f"warning: pretraining was cut: {r['cut']}" in capsys.readouterr().out


@pytest.fixture(scope="module")
def pretrained(data):
    return str(data / "base")


def test_instruction_tuning_plans_from_a_measured_slow_step(pretrained, tmp_path, monkeypatch):
    "The plan comes from steps timed on the instruction set itself, so a slow machine gets fewer steps and the cosine ends."
    SlowSteps(monkeypatch, 0.03)
    t = P.tune_in_budget(pretrained, S.builtin_instructions(), tmp_path / "sft", seconds=3, max_steps=10_000, lr=1e-3, progress=False)
    assert t["cut"] is None and t["steps"] == t["planned_steps"] < 10_000
    assert t["plan"]["limit"] == "time" and t["plan"]["seconds_per_step"] >= 0.03
    lrs = _lrs(tmp_path / "sft" / "sft_log.jsonl")
    assert len(lrs) == t["steps"]
    assert lrs[-1] == pytest.approx(S.sft_lr(t["steps"] - 1, t["steps"], 1e-3, max(1, round(0.05 * t["steps"]))))
    # few passes over the data: the cap, not the time, decides
    t2 = P.tune_in_budget(pretrained, S.builtin_instructions(), tmp_path / "sft2", seconds=60, max_steps=3, lr=1e-3, progress=False)
    assert t2["steps"] == t2["planned_steps"] == 3 and t2["plan"]["limit"] == "passes over the data"


def test_instruction_tuning_cut_by_the_time_limit_says_so(pretrained, tmp_path, monkeypatch, capsys):
    "Steps become 20x slower after the timing probe: the time limit stops the run, and the result and the console say so."
    SlowSteps(monkeypatch, 0.5, after=5)  # the probe's 5 steps keep their speed
    t = P.tune_in_budget(pretrained, S.builtin_instructions(), tmp_path / "sft", seconds=3, max_steps=10_000, lr=1e-3,
                         probe_steps=5, progress=False)
    assert t["steps"] < t["planned_steps"]
    assert t["cut"] == (f"the time limit stopped it at step {t['steps']} of {t['planned_steps']}, "
                        "before its learning-rate schedule ended")
    assert f"warning: instruction tuning was cut: {t['cut']}" in capsys.readouterr().out


def test_main_job_end_to_end_on_a_slow_machine(tmp_path, monkeypatch, capsys):
    "`run` with tiny settings, its steps slower than its timing probe: every stage runs, and summary.json tells the plans."
    (tmp_path / "corpus.txt").write_text("\n\n".join(_corpus()))
    SlowSteps(monkeypatch, 0.01)
    s = P.run(str(tmp_path / "run"), minutes=0.25, corpus=str(tmp_path / "corpus.txt"), instructions="builtin", vocab_size=300,
              preset="tiny", block_size=64, mc_examples=8, serve=False, progress=False)
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(on_disk["stages"]) == ["tokenizer", "shards", "pretraining", "instruction tuning", "evaluation"]
    pre, sft = on_disk["stages"]["pretraining"], on_disk["stages"]["instruction tuning"]
    assert pre["replanned"], "the probe's plan was not corrected from the slower pace"
    assert all(k in pre["replanned"][0] for k in ("from", "to", "at_step", "why"))
    # each schedule ended, or the stage says it was cut (the tests above make each case happen for sure)
    assert (pre["steps"] == pre["schedule_steps"] and pre["cut"] is None) or f"at step {pre['steps']} of" in pre["cut"]
    assert (sft["steps"] == sft["planned_steps"] and sft["cut"] is None) or f"at step {sft['steps']} of" in sft["cut"]
    assert sft["plan"]["why"] and sft["plan"]["limit"] in ("time", "passes over the data")
    for f in ("tokenizer.json", "pretrain/loss.png", "sft/sft.pt", "eval.json", "mc_heldout.jsonl"):
        assert (tmp_path / "run" / f).exists(), f
    out = capsys.readouterr().out
    assert "pretraining re-planned at step" in out and "instruction tuning planned:" in out
    assert f"planned {pre['planned_steps']} steps, re-planned from the pace it kept" in P.report(on_disk)
    with pytest.raises(FileExistsError, match="already holds a run"):
        P.run(str(tmp_path / "run"), minutes=0.25)


def test_cli_refuses_a_budget_that_is_not_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        P.cli(["--minutes", "0", "--out", str(tmp_path / "r"), "--no-serve"])
    assert e.value.code == 2
    assert "nanogpt-course run: error: --minutes must be a positive number of minutes, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # checked before any work


# --- what the run taught, at a glance (issue 14) ---

def test_precision_is_bf16_only_when_clearly_faster_on_a_cpu_with_bf16_units(monkeypatch):
    "Made-up step times: bf16 1.3x faster is taken, 1.1x is not; a CPU without bf16 units is never timed in bf16."
    cfg = P.GPTConfig.from_preset("tiny", vocab_size=300)
    asked = []
    def timings(f32, bf16):
        def seconds_per_step(*a, dtype="float32", **k):
            asked.append(dtype); return {"float32": f32, "bfloat16": bf16}[dtype]
        return seconds_per_step
    monkeypatch.setattr(P, "has_bf16_units", lambda: True)
    monkeypatch.setattr(P, "seconds_per_step", timings(0.13, 0.10))
    c = P.choose_precision(cfg, 8, 64)
    assert c["dtype"] == "bfloat16" and c["seconds_per_step"] == 0.10 and c["speedup"] == 1.3 and "1.30x" in c["why"]
    monkeypatch.setattr(P, "seconds_per_step", timings(0.11, 0.10))
    c = P.choose_precision(cfg, 8, 64)
    assert c["dtype"] == "float32" and c["seconds_per_step"] == 0.11 and "less than the 1.15x" in c["why"]
    monkeypatch.setattr(P, "has_bf16_units", lambda: False)
    asked.clear(); monkeypatch.setattr(P, "seconds_per_step", timings(0.13, 0.05))
    c = P.choose_precision(cfg, 8, 64)
    assert c["dtype"] == "float32" and asked == ["float32"] and "no bf16 units" in c["why"]


def test_cpu_bf16_units_are_read_from_the_flags():
    assert P.has_bf16_units("flags\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert P.has_bf16_units("flags\t: fpu amx_bf16 amx_tile\n")
    assert not P.has_bf16_units("flags\t: fpu sse avx2 avx512f avx512_vnni\n")


def _short_lines(n: int = 800) -> str:
    "Documents of short lines (3 to 8 words): what the skill generator draws its items from."
    rnd = random.Random(1)
    words = "the cat sat on a mat while some dog ran to its home and every bird sang in morning light".split()
    docs = ["\n".join(" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 8))).capitalize() + rnd.choice(".,;!?")
                      for _ in range(rnd.randint(4, 12))) for _ in range(n // 8)]
    return "\n\n".join(docs)


def test_main_job_summary_holds_what_each_stage_taught(tmp_path, capsys, monkeypatch):
    "A tiny run with skills: summary.json has tokens, loss vs ln V, multiple choice, skills per family, stop rate, stage times and precision; no NaN."
    (tmp_path / "corpus.txt").write_text(_short_lines())
    asked, real = {}, P.tune_in_budget
    def spy(init, records, out_dir, seconds, max_steps, **kw):  # what the main job asks of instruction tuning
        asked.update(records=len(records), seconds=seconds, max_steps=max_steps, **kw)
        return real(init, records, out_dir, seconds, max_steps, **kw)
    monkeypatch.setattr(P, "tune_in_budget", spy)
    P.run(str(tmp_path / "run"), minutes=0.25, corpus=str(tmp_path / "corpus.txt"), instructions="builtin", vocab_size=300,
          preset="tiny", block_size=128, mc_examples=8, skill_items=20, serve=False, progress=False)
    text = (tmp_path / "run" / "summary.json").read_text()
    def no_nan(c): raise AssertionError(f"summary.json holds {c}")
    s = json.loads(text, parse_constant=no_nan)
    pre = s["stages"]["pretraining"]
    assert s["tokens_seen"] == pre["tokens"] > 0
    assert s["validation_loss"]["uniform_baseline"] == pytest.approx(__import__("math").log(300), abs=1e-3)
    assert s["validation_loss"]["pretrained"] == pre["val_loss"]
    assert set(s["multiple_choice"]) == {"untrained", "pretrained", "instruction-tuned"}
    assert set(s["skills"]) == set(S.SKILLS) | {"mean"}
    for f, v in s["skills"].items():
        assert 0 <= v["pretrained"] <= 1 and 0 <= v["tuned"] <= 1 and v["n"] == (P.HELDOUT * len(S.SKILLS) if f == "mean" else P.HELDOUT)
    assert set(s["stop_rate"]) == {"pretrained", "tuned"}
    assert s["precision"]["dtype"] in ("float32", "bfloat16") and s["precision"]["why"]
    st = s["stage_times"]
    assert list(st) == ["tokenizer", "shards", "pretraining", "instruction tuning", "evaluation"]
    assert st["pretraining"]["precision"] == st["instruction tuning"]["precision"] == s["precision"]["dtype"]
    assert all(isinstance(v["cut"], bool) and isinstance(v["replanned"], bool) and v["seconds"] >= 0 for v in st.values())
    assert s["stages"]["instruction tuning"]["skill_items"] == 20 * len(S.SKILLS)
    # batches of SFT_BATCH, passes counted in those batches
    assert asked["batch_size"] == P.SFT_BATCH == 32 and asked["lr"] == P.SFT_LR
    assert asked["max_steps"] == max(10, int(4.0 * 0.9 * asked["records"] / P.SFT_BATCH))
    assert asked["seconds"] >= 0.1 * 0.25 * 60  # at least a tenth of the budget, even after pretraining overran
    ev = s["stages"]["evaluation"]
    assert ev["sampling"]["seed"] is not None and ev["sampling"]["temperature"] > 0
    assert all("greedy" in a for a in ev["answers"]) and any(a["context"] for a in ev["answers"])  # skill items shown too
    out = capsys.readouterr().out
    assert "skills:" in out and "stop rate:" in out and "precision:" in out and "ln V =" in out and "(greedy)" in out
    assert "what tuning cost here: acc_norm" in out


def test_cli_refuses_negative_skill_items(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        P.cli(["--skill-items", "-1", "--out", str(tmp_path / "r"), "--no-serve"])
    assert e.value.code == 2 and "--skill-items must be an integer >= 0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_defaults_are_run_defaults(tmp_path, monkeypatch):
    "`nanogpt-course run` with no flags asks `run` for what `run` does by default: 2,000 skill items per family, 15 minutes."
    import inspect
    defaults = {k: v.default for k, v in inspect.signature(P.run).parameters.items()}
    got = {}
    monkeypatch.setattr(P, "run", lambda *a, **k: got.update(args=a, kw=k))
    assert P.cli(["--out", str(tmp_path / "r"), "--no-serve"]) == 0
    assert got["kw"]["skill_items"] == defaults["skill_items"] == 2000
    assert got["args"][1] == defaults["minutes"] == 15.0


# --- the main job in stages, each asking the lesson that owns a decision (issue 12) ---

def test_run_checks_every_argument_before_it_makes_the_run_directory(tmp_path):
    "A bad --skill-items or --device is refused before the run's folder exists (it used to be made first)."
    for kw, says in ((dict(skill_items=-1), "--skill-items must be an integer >= 0"),
                     (dict(device="tpu"), "--device must be auto, cpu, cuda"),
                     (dict(minutes=0), "--minutes must be a positive number of minutes")):
        with pytest.raises(ValueError, match=re.escape(says)):
            P.run(str(tmp_path / "r"), serve=False, progress=False, **kw)
        assert not (tmp_path / "r").exists(), kw


def test_pretraining_plan_asks_training_for_its_batch_geometry(monkeypatch):
    "The step timed is the step notebook 04b takes: `batch_geometry`'s sequence, micro-batch and accumulation."
    asked, timed = [], []
    real = T.batch_geometry
    monkeypatch.setattr(T, "batch_geometry", lambda *a, **k: asked.append(a) or real(*a, **k))
    monkeypatch.setattr(P, "choose_precision", lambda cfg, B, T_, accum, device: timed.append((B, T_, accum)) or
                        {"dtype": "float32", "seconds_per_step": 0.5, "why": "made up"})
    prec, steps = P.plan_pretraining("tiny", 64, 300, 100)
    seq, batch, _, accum = real(T.make_config("tiny", block_size=64, seq_len=64), 64)
    assert asked and timed == [(batch, seq, accum)] == [(8, 64, 2)]
    assert steps == P.plan_steps(100, 0.5) and prec["dtype"] == "float32"
    # a batch that does not divide the preset's tokens a step is refused with training's own message, before any timing
    timed.clear()
    with pytest.raises(ValueError, match=r"total_batch_tokens=1024 must be a multiple of batch_size\*seq_len"):
        P.plan_pretraining("tiny", 48, 300, 100)
    assert not timed


def test_step_timing_uses_the_training_step_in_the_runtime_precision(monkeypatch):
    "seconds_per_step runs notebook 04b's train_step inside notebook 03c's autocast_for, and refuses an unknown dtype."
    contexts, steps = [], []
    real_ctx, real_step = P.autocast_for, T.train_step
    monkeypatch.setattr(P, "autocast_for", lambda device, dtype: contexts.append((device, dtype)) or real_ctx(device, dtype))
    monkeypatch.setattr(T, "train_step", lambda *a, **k: steps.append(a[3]) or real_step(*a, **k))
    cfg = P.GPTConfig.from_preset("tiny", vocab_size=64, block_size=16)
    assert P.seconds_per_step(cfg, 2, 16, accum=3, n=2, dtype="bfloat16") > 0
    assert set(contexts) == {("cpu", "bfloat16")} and steps == [3, 3, 3]  # a warm-up step and n timed ones, 3 micro-batches each
    with pytest.raises(ValueError, match="--dtype must be auto, float32 or bfloat16"):
        P.seconds_per_step(cfg, 2, 16, n=1, dtype="fp16")


def test_evaluation_stage_loads_models_through_the_checkpoint_lesson(data, tmp_path, monkeypatch):
    "The evaluation loads both models with notebook 03b's load_model, scores three models and writes eval.json."
    from nanogpt_course import checkpoint as C, hellaswag as H
    from nanogpt_course.tokenizer import get_tokenizer
    loaded = []
    monkeypatch.setattr(P, "load_model", lambda p, device="cpu": loaded.append(str(p)) or C.load_model(p, device=device))
    enc = get_tokenizer(str(data / "tok.json"))
    examples = H.make_mc_examples(P.D.heldout_text(data / "data", enc), enc, n=4, seed=0)
    (tmp_path / "pretrain").symlink_to(data / "base", target_is_directory=True)
    tuned = {"checkpoint": str(data / "base"), "val_loss_before": 2.0, "val_loss_after": 1.0}
    ev = P.evaluation_stage(tmp_path, enc, examples, {"val_loss": 3.0}, tuned, [], progress=False)
    assert loaded == [str(tmp_path / "pretrain"), str(data / "base")]
    assert list(ev["multiple_choice_from_heldout_text"]) == ["untrained", "pretrained", "instruction-tuned"]
    assert all(v["n"] == 4 for v in ev["multiple_choice_from_heldout_text"].values())
    assert len(ev["answers"]) == len(P.SHOWCASE) and ev["skill_scores"] is None
    assert ev["validation_loss"] == {"pretraining": 3.0, "instruction_before": 2.0, "instruction_after": 1.0}
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["multiple_choice"] == ev["multiple_choice_from_heldout_text"]
