"""Appendix A4 (notebook 14, `nanogpt_course.moe`): the mixture of experts' proofs, and its checkpoints through
pretraining (one process and two under torchrun), resume, sampling, the server, the playground and the refused export."""
import json, subprocess, sys

import pytest
import torch
import torch.nn.functional as F

from nanogpt_course.block import Block
from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.moe import MoE, active_params, expert_stats, load_balancing_loss, route
from nanogpt_course.checkpoint import load_checkpoint, load_model
from nanogpt_course.train import read_log

from helpers import RUN


def moe_cfg(E=4, k=1, **kw):
    return GPTConfig.from_preset("tiny", vocab_size=320, n_expert=E, n_expert_active=k, **{"n_embd": 32, **kw})


def test_one_expert_top1_computes_the_dense_block():
    torch.manual_seed(0)
    dense = Block(GPTConfig.from_preset("tiny", vocab_size=320, n_embd=32))
    one = Block(moe_cfg(1, 1), mlp=MoE(moe_cfg(1, 1)))
    sd = {k.replace("mlp.", "mlp.experts.0."): v for k, v in dense.state_dict().items()}
    one.load_state_dict({**sd, "mlp.router.weight": torch.randn(1, 32)})  # any router: one expert's gate is exactly 1
    x = torch.randn(3, 7, 32)
    assert torch.equal(one(x), dense(x))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_every_token_reaches_exactly_k_experts_and_each_expert_computes_only_its_tokens(k):
    torch.manual_seed(k)
    layer, rows = MoE(moe_cfg(4, k)), {}
    for e, ex in enumerate(layer.experts):
        ex.register_forward_hook(lambda m, inp, out, e=e: rows.__setitem__(e, inp[0].shape[0]))
    x = torch.randn(2, 30, 32)
    gates, chosen, _ = route(layer.router(x.reshape(-1, 32)), k)
    assert all(len(set(r)) == k for r in chosen.tolist())  # k different experts a token
    assert torch.allclose(gates.sum(-1), torch.ones(60)) if k > 1 else (gates < 1).all()
    layer(x)
    assert [rows[e] for e in range(4)] == torch.bincount(chosen.flatten(), minlength=4).tolist()
    assert sum(rows.values()) == k * 60


def test_output_is_the_gate_weighted_sum_of_the_chosen_experts():
    torch.manual_seed(1)
    layer = MoE(moe_cfg(4, 2)).eval()
    x = torch.randn(5, 32)
    gates, chosen, _ = route(layer.router(x), 2)
    want = torch.stack([sum(gates[i, j] * layer.experts[int(chosen[i, j])](x[i]) for j in range(2)) for i in range(5)])
    assert torch.allclose(layer(x[None])[0], want, atol=1e-6)


def test_gradients_reach_only_the_chosen_experts():
    torch.manual_seed(2)
    layer = MoE(moe_cfg(4, 2)).train()
    with torch.no_grad(): layer.router.weight[3] = 0; layer.router.weight[3, 0] = -1e4
    x = torch.randn(2, 20, 32); x[..., 0] = 1.0
    layer(x).square().sum().backward()
    grads = [sum(float(p.grad.abs().sum()) for p in ex.parameters()) for ex in layer.experts]
    assert grads[3] == 0.0 and all(g > 0 for g in grads[:3])


def test_load_balancing_loss_is_one_when_even_and_E_when_collapsed():
    N, E = 64, 4
    assert abs(float(load_balancing_loss(torch.full((N, E), 1 / E), torch.arange(N)[:, None] % E)) - 1) < 1e-6
    one_hot = torch.zeros(N, E); one_hot[:, 2] = 1
    assert abs(float(load_balancing_loss(one_hot, torch.full((N, 1), 2))) - E) < 1e-6


def test_training_loss_adds_the_balancing_loss_and_validation_does_not():
    torch.manual_seed(3)
    m = GPT(moe_cfg(4, 1)).train()
    x = torch.randint(0, 320, (2, 16))
    logits, loss = m(x, x)
    aux = torch.stack([b.mlp.aux_loss for b in m.transformer.h]).mean()
    assert torch.allclose(loss, F.cross_entropy(logits.view(-1, 320), x.view(-1)) + 0.01 * aux, atol=1e-5)
    s = expert_stats(m)
    assert len(s["expert_share"]) == 2 and all(abs(sum(r) - 1) < 1e-3 for r in s["expert_share"]) and s["aux_loss"] >= 1 - 1e-4
    assert expert_stats(m) == {}  # counters restart after each read
    m.eval()
    logits, loss = m(x, x)
    assert torch.allclose(loss, F.cross_entropy(logits.view(-1, 320), x.view(-1)), atol=1e-5) and expert_stats(m) == {}


def test_active_parameters_count_k_experts():
    dense, moe = GPT(GPTConfig.from_preset("tiny", vocab_size=320)), GPT(moe_cfg(4, 1, n_embd=64))
    assert active_params(moe) == dense.num_params() + 2 * 64 * 4  # + the routers
    per_expert = (64 * 256 + 256) + (256 * 64 + 64)  # c_fc and c_proj with biases
    assert moe.num_params() == dense.num_params() + 2 * 3 * per_expert + 2 * 64 * 4  # 3 more experts a layer, and the routers


@pytest.mark.parametrize("kw, msg", [(dict(n_expert=-1), "n_expert must be an integer >= 0"),
                                     (dict(n_expert=2, n_expert_active=3), "n_expert_active must be an integer in 1..n_expert=2"),
                                     (dict(n_expert=2, n_expert_active=0), "n_expert_active"),
                                     (dict(n_expert=2, aux_loss_coef=-0.1), "aux_loss_coef must be a number >= 0")])
def test_config_refuses_bad_expert_settings(kw, msg):
    with pytest.raises(ValueError, match=msg): GPTConfig(**kw)


@pytest.mark.parametrize("flags, msg", [(["--n-expert", "-1"], "--n-expert must be an integer >= 0"),
                                        (["--n-expert", "2", "--n-expert-active", "3"], "--n-expert-active 3 needs --n-expert of at least"),
                                        (["--n-expert-active", "2"], "--n-expert-active 2 needs --n-expert"),
                                        (["--n-expert", "2", "--n-expert-active", "0"], "--n-expert-active must be an integer >= 1")])
def test_cli_refuses_bad_expert_flags_before_any_work(data, tmp_path, capsys, flags, msg):
    from nanogpt_course.cli import main
    assert main(["pretrain", "--data", str(data / "data"), "--out", str(tmp_path / "r"), *flags, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err and not (tmp_path / "r").exists()


def _flags(d: dict) -> list[str]:
    return [x for k, v in d.items() for x in ([f"--{'' if v else 'no-'}{k.replace('_', '-')}"] if isinstance(v, bool)
                                               else [f"--{k.replace('_', '-')}", str(v)])]


@pytest.fixture(scope="module")
def moe_run(data, tmp_path_factory):
    "`nanogpt-course pretrain --n-expert 4 --n-expert-active 2`, stopped after 6 of 9 steps, then resumed."
    from nanogpt_course.cli import main
    out = tmp_path_factory.mktemp("moe") / "run"
    args = ["pretrain", "--data", str(data / "data"), "--out", str(out), *_flags(RUN), "--n-expert", "4", "--n-expert-active", "2"]
    assert main([*args, "--stop-after", "6"]) == 0
    first = read_log(out)
    assert main([*args, "--resume"]) == 0
    return out, args, first


def test_cli_pretrains_resumes_and_logs_the_experts(moe_run, capsys):
    out, args, first = moe_run
    ck = load_checkpoint(out / "ckpt_0000009.pt")
    assert ck["step"] == 9 and ck["config"]["n_expert"] == 4 and ck["config"]["n_expert_active"] == 2
    assert any(k.startswith("transformer.h.1.mlp.experts.3.") for k in ck["model"]) and "transformer.h.0.mlp.router.weight" in ck["model"]
    recs = read_log(out)
    stats = [r for r in recs if "expert_share" in r]
    # each record covers the steps trained since the last one: none at step 0, nor at 6 where the resumed process starts
    assert [r["step"] for r in stats] == [3, 8]
    assert all(len(r["expert_share"]) == 2 and len(r["expert_share"][0]) == 4 and 1 - 1e-4 <= r["aux_loss"] <= 4 for r in stats)
    assert [r["step"] for r in recs if "loss" in r] == list(range(9))
    from nanogpt_course.cli import main
    capsys.readouterr()
    assert main([*[a if a != "4" else "2" for a in args], "--resume"]) == 1  # other experts than the checkpoint's: refused
    assert "n_expert: checkpoint has 4, this run asks for 2" in capsys.readouterr().err


def test_a_moe_checkpoint_loads_anywhere_without_importing_the_appendix(moe_run):
    "Notebook 03's make_mlp finds the MoE class by name: a process that never imports nanogpt_course.moe still loads the run."
    out, _, _ = moe_run
    code = ("import sys; from nanogpt_course.checkpoint import load_model; m, e = load_model(sys.argv[1]); "
            "print(type(m.transformer.h[0].mlp).__name__, m.config.n_expert, m.config.n_expert_active)")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["MoE", "4", "2"], r.stderr


def test_a_moe_model_samples_serves_and_plays(moe_run):
    from fastapi.testclient import TestClient
    from nanogpt_course.playground import Playground
    from nanogpt_course.serve import create_app
    out, _, _ = moe_run
    model, enc = load_model(out)
    idx = torch.tensor([enc.encode("the cat")])
    g = lambda: model.generate(idx, 12, temperature=0.9, generator=torch.Generator().manual_seed(0), n_vocab=enc.n_vocab)
    assert torch.equal(g(), g()) and g().shape == (1, idx.shape[1] + 12)  # sampled with a seed: reproducible
    greedy = model.generate(idx, 8, temperature=0.0, n_vocab=enc.n_vocab)[0, idx.shape[1]:].tolist()
    with TestClient(create_app({"moe": (model, enc)})) as client:
        r = client.post("/v1/completions", json={"prompt": "the cat", "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == enc.decode(greedy)  # the engine's batch = generate
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True})
        assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    pg = Playground({"moe": str(out)}, prompt="the dog", max_tokens=5, seed=0)
    pg.generate_button.click()
    assert pg.wait(60) and pg.last_error is None, pg.status.value
    assert type(pg.get_model("moe")[0].transformer.h[0].mlp).__name__ == "MoE"


def test_exporting_a_moe_model_to_hugging_face_is_refused(moe_run, tmp_path):
    from nanogpt_course.hf import to_transformers
    model, _ = load_model(moe_run[0])
    with pytest.raises(ValueError, match="GPT-2's Hugging Face format has one dense MLP per block and no router"):
        model.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="no router"): to_transformers(model, tmp_path / "hf2")
    assert not (tmp_path / "hf").exists() and not (tmp_path / "hf2").exists()


def test_torchrun_two_processes_sum_the_experts_counts(data, tmp_path):
    "DDP over gloo: every expert's parameters are in each step's graph (an expert without tokens gets zero gradients)."
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "nanogpt_course.cli",
                        "pretrain", "--data", str(data / "data"), "--out", str(out), *_flags({**RUN, "max_steps": 4, "total_batch_tokens": 256}),
                        "--n-expert", "4"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "2 process(es)" in r.stdout
    stats = [x for x in read_log(out) if "expert_share" in x]
    assert stats and all(abs(sum(row) - 1) < 1e-3 for x in stats for row in x["expert_share"])
    assert load_checkpoint(out / "ckpt_0000004.pt")["world_size"] == 2
