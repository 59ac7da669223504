"""Pretraining proofs on CPU (nanogpt_course.train): exact resume, DDP == gradient accumulation, SIGKILL during a save,
config refusal, checkpoints and load_model, the CLI. Self-contained: a small BPE tokenizer and a corpus built in the test."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch

from helpers import RUN
from nanogpt_course.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, load_model
from nanogpt_course.train import pretrain, read_log

ROOT = Path(__file__).resolve().parents[1]


def _flags(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        flag = "--" + k.replace("_", "-")
        out += ([flag] if v else [f"--no-{k.replace('_', '-')}"]) if isinstance(v, bool) else [flag, str(v)]
    return out


def _losses(run_dir):
    recs = read_log(run_dir)
    return [r["loss"] for r in recs if "loss" in r], [r["val_loss"] for r in recs if "val_loss" in r]


@pytest.fixture(scope="module")
def reference(data):
    "An uninterrupted 9-step run."
    s = pretrain(data / "data", out_dir=data / "ref", **RUN)
    assert s["steps"] == 9
    return _losses(data / "ref")


def test_resume_is_bitwise_exact(data, reference):
    "Stop after step 4, resume: the same losses, bit for bit, step for step, and the same final weights."
    s = pretrain(data / "data", out_dir=data / "stop", stop_after=4, **RUN)
    assert s["steps"] == 4 and s["stopped_early"]
    assert [p.name for p in list_checkpoints(data / "stop")] == ["ckpt_0000004.pt", "ckpt_0000003.pt"]
    s2 = pretrain(data / "data", out_dir=data / "stop", resume=True, **RUN)
    assert s2["steps"] == 9
    train, val = _losses(data / "stop")
    assert train == reference[0] and val == reference[1]  # exact float equality
    a = load_checkpoint(data / "ref" / "ckpt_0000009.pt"); b = load_checkpoint(data / "stop" / "ckpt_0000009.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["loader"] == b["loader"] and a["tokens"] == b["tokens"] == 9 * 512


def test_resume_refuses_a_different_config(data, reference):
    with pytest.raises(ValueError) as e:
        pretrain(data / "data", out_dir=data / "ref", resume=True, **{**RUN, "lr": 1e-3, "max_steps": 12})
    msg = str(e.value)
    assert "refusing to resume" in msg and "lr: checkpoint has 0.003, this run asks for 0.001" in msg and "max_steps" in msg
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pretrain(data / "data", out_dir=data / "empty_run", resume=True, **RUN)


def test_sigkill_during_save_leaves_a_loadable_checkpoint(data, reference):
    "SIGKILL a real training process in the middle of writing its second checkpoint; the first one loads and the run resumes exactly."
    out = data / "killed"
    # tests/slow_save_run.py: pretraining whose 2nd torch.save stops half-written and waits
    cmd = [sys.executable, str(ROOT / "tests" / "slow_save_run.py"), "--data", str(data / "data"), "--out", str(out), *_flags(RUN)]
    env = dict(os.environ)
    with open(data / "killed.err", "w") as err:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 150
        while time.time() < deadline and "[save paused" not in (data / "killed.err").read_text() and p.poll() is None:
            time.sleep(0.1)
        assert p.poll() is None, (data / "killed.err").read_text()
        p.send_signal(signal.SIGKILL); p.wait()
    partial = list(out.glob(".ckpt_0000006.pt.tmp-*"))
    assert partial and partial[0].stat().st_size > 0  # the kill really hit mid-save
    assert [c.name for c in list_checkpoints(out)] == ["ckpt_0000003.pt"]
    model, enc = load_model(out)  # the run folder's newest checkpoint is the good one
    assert enc.n_vocab == 320 and load_checkpoint(out / "ckpt_0000003.pt")["step"] == 3
    with pytest.raises(CheckpointError, match="tmp"):
        load_checkpoint(partial[0])
    s = pretrain(data / "data", out_dir=out, resume=True, **RUN)
    assert s["steps"] == 9 and not list(out.glob(".*.tmp-*"))  # stale temporary file cleaned up
    assert _losses(out) == reference


def test_ddp_two_processes_match_gradient_accumulation(data, reference):
    "torchrun --nproc_per_node 2 (gloo, 2 micro-steps each) == 1 process with 4 micro-steps, within 1e-5; every rank's RNG saved."
    out = data / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "nanogpt_course.train", "--data", str(data / "data"), "--out", str(out), *_flags(RUN)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 process(es)" in r.stdout and "2 accumulation" in r.stdout
    train, val = _losses(out)
    ref_train, ref_val = reference
    assert len(train) == len(ref_train) == 9 and len(val) == len(ref_val)
    assert max(abs(a - b) for a, b in zip(train, ref_train)) < 1e-5, (train, ref_train)
    assert max(abs(a - b) for a, b in zip(val, ref_val)) < 1e-5
    ck = load_checkpoint(out / "ckpt_0000009.pt")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # each rank's own stream
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ck["model"])


def test_checkpoint_contents_and_load_model(data, reference, tmp_path):
    ck = load_checkpoint(data / "ref" / "ckpt_0000009.pt")
    for key in ("model", "optimizer", "config", "train_config", "tokenizer", "kind", "step", "tokens", "rng", "loader"):
        assert key in ck
    assert ck["kind"] == "pretrain" and ck["config"]["vocab_size"] == 320 and ck["config"]["n_embd"] == 32
    model, enc = load_model(data / "ref" / "ckpt_0000009.pt")
    assert not model.training and enc.n_vocab == 320
    x = torch.tensor([enc.encode("the cat sat")])
    model2, _ = load_model(data / "ref")
    assert torch.equal(model(x)[0], model2(x)[0])
    model.save_pretrained(tmp_path / "hf")  # a Hugging Face folder loads too
    model3, _ = load_model(tmp_path / "hf")
    torch.testing.assert_close(model3(x)[0], model(x)[0])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.pt is not a checkpoint"): load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"): load_model(tmp_path / "missing.pt")
    assert (data / "ref" / "loss.png").exists() and json.loads((data / "ref" / "summary.json").read_text())["steps"] == 9


def test_cli(data, capsys):
    from nanogpt_course.cli import main
    assert main(["pretrain", "--data", str(data / "nowhere"), "--out", str(data / "x")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["pretrain", "--preset", "tiny", "--data", str(data / "data"), "--out", str(data / "cli"),
                 *_flags({**RUN, "max_steps": 2})]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2
    with pytest.raises(SystemExit): main(["pretrain", "--preset", "nope", "--data", "x"])
    with pytest.raises(ValueError, match="dtype must be"):  # refused before anything is written
        pretrain(data / "data", out_dir=data / "bad-dtype", dtype="float16", **RUN)
    assert not (data / "bad-dtype").exists()


def test_eval_hooks_run_at_their_steps_and_log(data, tmp_path, capsys):
    "Pretraining runs the EvalHooks a later lesson gives it (step 0, every N, the last) and logs what they return."
    from nanogpt_course.train import EvalHook
    calls = []
    hook = EvalHook("probe", 2, lambda model, enc, device, rank, world: calls.append(rank) or {"probe_metric": 0.5})
    s = pretrain(data / "data", out_dir=tmp_path / "run", hooks=[hook], **{**RUN, "max_steps": 4})
    assert s["steps"] == 4 and len(calls) == 3
    assert [r["step"] for r in read_log(tmp_path / "run") if "probe_metric" in r] == [0, 2, 3]
    # --hellaswag-every without notebook 06's hook (python -m nanogpt_course.train) says so and trains on
    s = pretrain(data / "data", out_dir=tmp_path / "run2", hellaswag_every=2, **{**RUN, "max_steps": 2})
    assert s["steps"] == 2 and "no HellaSwag evaluator" in capsys.readouterr().err


def test_fresh_run_refuses_a_folder_with_checkpoints(data, reference):
    "Starting a new run over an old one would mix their checkpoints: refused, with the way out."
    with pytest.raises(ValueError, match="already holds checkpoints .*pass --resume"):
        pretrain(data / "data", out_dir=data / "ref", **RUN)


# --- issue 11: bad flags, damaged files and finished runs -------------------------------------------------------------

@pytest.mark.parametrize("flag, value, msg", [
    ("--grad-clip", "-1", "--grad-clip must be a number >= 0"), ("--batch-size", "-2", "--batch-size must be an integer >= 1"),
    ("--batch-size", "0", "--batch-size"), ("--save-every", "-1", "--save-every"), ("--max-steps", "0", "--max-steps"),
    ("--max-steps", "-5", "--max-steps"), ("--eval-every", "-1", "--eval-every"), ("--warmup-steps", "-5", "--warmup-steps"),
    ("--min-lr-ratio", "5", "--min-lr-ratio must be a number in [0, 1]"), ("--device", "tpu", "--device must be auto, cpu"),
    ("--lr", "nan", "--lr must be a number > 0")])
def test_cli_refuses_out_of_range_flags_before_any_work(data, tmp_path, capsys, flag, value, msg):
    from nanogpt_course.train import cli
    out = tmp_path / "run"
    assert cli(["--data", str(data / "data"), "--out", str(out), flag, value, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
    assert not out.exists()  # nothing was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message a machine without CUDA gives")
def test_device_cuda_without_cuda_is_a_message(data, tmp_path, capsys):
    from nanogpt_course.train import cli
    assert cli(["--data", str(data / "data"), "--out", str(tmp_path / "r"), "--device", "cuda"]) == 1
    assert "sees no CUDA GPU" in capsys.readouterr().err


def test_out_is_a_file_and_vocab_too_small(data, tmp_path, capsys):
    from nanogpt_course.train import cli
    f = tmp_path / "f.txt"; f.write_text("x")
    assert cli(["--data", str(data / "data"), "--out", str(f)]) == 1
    assert "is a file" in capsys.readouterr().err and f.read_text() == "x"
    assert cli(["--data", str(data / "data"), "--out", str(tmp_path / "v"), "--vocab-size", "100"]) == 1
    assert "--vocab-size 100 is smaller than the data's tokenizer (320 ids)" in capsys.readouterr().err


def test_save_every_zero_saves_only_at_the_end(data, tmp_path):
    s = pretrain(data / "data", out_dir=tmp_path / "r", **{**RUN, "save_every": 0, "max_steps": 4})
    assert s["steps"] == 4 and [p.name for p in list_checkpoints(tmp_path / "r")] == ["ckpt_0000004.pt"]


def test_flipped_bytes_in_a_checkpoint_are_caught_and_resume_skips_it(data, tmp_path, capsys):
    "8 flipped bytes inside a tensor: the checksum refuses the file, --resume continues from the previous checkpoint."
    out = tmp_path / "r"
    pretrain(data / "data", out_dir=out, stop_after=6, **RUN)
    newest = list_checkpoints(out)[0]
    assert newest.name == "ckpt_0000006.pt"
    w = load_checkpoint(newest)["model"]["lm_head.weight"]
    raw = bytearray(newest.read_bytes()); at = raw.find(w[5, :4].numpy().tobytes())
    assert at > 0
    raw[at:at + 8] = b"\xff" * 8; newest.write_bytes(raw)
    assert torch.load(newest, weights_only=True)["step"] == 6  # torch alone loads it without a word
    with pytest.raises(CheckpointError, match="ckpt_0000006.pt is corrupt"): load_checkpoint(newest)
    s = pretrain(data / "data", out_dir=out, resume=True, **RUN)
    assert "skipping" in capsys.readouterr().err and s["steps"] == 9


def test_resume_of_a_finished_run_is_a_no_op(data, reference, capsys):
    before = (data / "ref" / "summary.json").read_text()
    s = pretrain(data / "data", out_dir=data / "ref", resume=True, **RUN)
    assert s["already_finished"] and s["steps"] == 9
    assert "nothing to resume" in capsys.readouterr().out
    assert (data / "ref" / "summary.json").read_text() == before
    assert "NaN" not in before


def test_no_nan_in_json_files(tmp_path):
    from nanogpt_course.train import to_json
    assert json.loads(to_json({"a": float("nan"), "b": [float("inf"), 1.5]})) == {"a": None, "b": [None, 1.5]}


def test_cut_off_last_log_line_does_not_block_resume(data, reference, tmp_path, capsys):
    out = tmp_path / "r"
    pretrain(data / "data", out_dir=out, stop_after=4, **RUN)
    with open(out / "log.jsonl", "a") as f: f.write('{"step": 4, "loss": 3.1, "sam')  # killed mid-line
    s = pretrain(data / "data", out_dir=out, resume=True, **RUN)
    assert s["steps"] == 9 and "cut-off last line" in capsys.readouterr().err
    assert _losses(out) == reference


def test_resume_accepts_the_same_data_folder_written_differently(data, reference, tmp_path, monkeypatch):
    out = tmp_path / "r"
    monkeypatch.chdir(data)
    pretrain("data", out_dir=out, stop_after=4, **RUN)
    s = pretrain(str((data / "data").resolve()), out_dir=out, resume=True, **RUN)  # relative first, absolute now
    assert s["steps"] == 9


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756), ("NVIDIA H100 NVL", 835), ("NVIDIA H200", 989),
    ("NVIDIA GH200 480GB", 989), ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA A100-PCIE-40GB", 312), ("NVIDIA A100 80GB PCIe", 312),
    ("NVIDIA L40S", 362.05), ("NVIDIA L40", 181.05), ("NVIDIA L4", 121),
    ("NVIDIA A10G", None), ("NVIDIA H200 NVL", None), ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", None), ("NVIDIA GeForce RTX 4090", None),
    ("NVIDIA RTX A1000", None), ("Tesla T4", None)])
def test_peak_flops_by_device_name(monkeypatch, name, tflops):
    "Each GPU gets its own datasheet peak: 'L40' is not an L4, 'H100 NVL' not the SXM H100; unknown kinds (and MIG slices) get None."
    from nanogpt_course.train import peak_flops, peak_flops_for
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    for got in (peak_flops("cuda"), peak_flops("cuda:0"), peak_flops_for(name), peak_flops_for(name.upper())):
        assert got == (None if tflops is None else pytest.approx(tflops * 1e12, rel=1e-9)), (name, got)
    assert peak_flops("cpu") is None
