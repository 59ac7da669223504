"""GPT against Hugging Face transformers: weights in and out, logits and greedy generation, over several sizes.

The notebook 03 shows one parity check of each kind; these run more shapes and both of transformers' attention
implementations, the legacy OpenAI file layout, and generation against `transformers.generate()`.
"""
import json, warnings
import pytest
import torch
from nanogpt_course.model import GPT, GPTConfig

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel
transformers.logging.set_verbosity_error()

SIZES = [  # (vocab, block, n_layer, n_head, n_embd)
    (300, 32, 3, 4, 48),
    (1000, 64, 2, 2, 64),
    (97, 16, 1, 1, 8),
]

def hf_model(vocab, block, n_layer, n_head, n_embd, attn="eager", seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=block, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    m = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # a random init that is not near-constant: bigger weights, non-trivial LayerNorms and biases
        for name, p in m.named_parameters():
            if p.dim() == 2: p.normal_(0, 0.3)
            elif name.endswith("weight"): p.normal_(1.0, 0.2)  # LayerNorm scales
            else: p.normal_(0, 0.2)  # biases
    return m.eval()

def max_diff(a, b): return (a - b).abs().max().item()

@pytest.fixture(autouse=True)
def one_thread():
    "Small models on a busy 2-core machine: one torch thread is steadier (two OpenMP threads stall each other)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_from_pretrained_parity(tmp_path, size, attn):
    hf = hf_model(*size)
    hf.save_pretrained(tmp_path)
    hf = GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation=attn).eval()
    ours = GPT.from_pretrained(tmp_path).eval()
    vocab, block = size[0], size[1]
    idx = torch.randint(0, vocab, (3, block), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert max_diff(ours(idx)[0], hf(idx).logits) <= 1e-4
        # the loss on the same targets agrees too (transformers shifts the labels itself)
        ours_loss = ours(idx[:, :-1], targets=idx[:, 1:])[1]
        assert abs(ours_loss.item() - hf(idx, labels=idx).loss.item()) <= 1e-4

@pytest.mark.parametrize("bias", [True, False])
def test_save_pretrained_roundtrip(tmp_path, bias):
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=500, block_size=40, n_layer=2, n_head=4, n_embd=32, bias=bias)).eval()
    with torch.no_grad():
        for p in ours.parameters(): p.add_(torch.randn_like(p) * 0.1)
    ours.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["n_positions"] == 40 and cfg["tie_word_embeddings"] is True
    with warnings.catch_warnings(record=True):  # transformers' notices about the config are not what is tested
        warnings.simplefilter("always")
        hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 500, (2, 40))
    with torch.no_grad():
        assert max_diff(hf(idx).logits, ours(idx)[0]) <= 1e-4
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # transformers re-tied the head
    # and back again: a directory written by transformers from our weights loads into GPT unchanged
    hf.save_pretrained(tmp_path / "again")
    again = GPT.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        assert max_diff(again(idx)[0], ours(idx)[0]) <= 1e-5

def test_legacy_openai_layout(tmp_path):
    "OpenAI's original pytorch_model.bin: no `transformer.` prefix, attention-mask buffers, no lm_head."
    hf = hf_model(300, 32, 2, 4, 48)
    sd = {k[len("transformer."):]: v.clone() for k, v in hf.state_dict().items() if k.startswith("transformer.")}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(sd, tmp_path / "pytorch_model.bin")
    hf.config.to_json_file(tmp_path / "config.json")
    ours = GPT.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        assert max_diff(ours(idx)[0], hf(idx).logits) <= 1e-4

def test_unsupported_configs_are_refused(tmp_path):
    hf = hf_model(300, 32, 1, 4, 48)
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key, value, message in (("activation_function", "relu", "activation_function"),
                                ("n_inner", 100, "n_inner"), ("model_type", "llama", "model_type")):
        bad = dict(cfg, **{key: value})
        (tmp_path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, n_layer=2)))  # weights for 1 layer, config says 2
    with pytest.raises(ValueError, match="do not match"):
        GPT.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is a file"):
        GPT.from_pretrained(tmp_path / "config.json")

@pytest.mark.parametrize("size", SIZES[:2])
def test_greedy_generation_matches_transformers(tmp_path, size):
    hf = hf_model(*size)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path).eval()
    vocab, block = size[0], size[1]
    prompt = torch.randint(0, vocab, (2, 5), generator=torch.Generator().manual_seed(2))
    n = block - 5  # up to the end of the context (transformers cannot go past it)
    with torch.no_grad():
        ref = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0, eos_token_id=None)
    for use_cache in (True, False):
        out = ours.generate(prompt, n, temperature=0, use_cache=use_cache)
        assert out.tolist() == ref.tolist()
    assert len(set(ref[0, 5:].tolist())) > 3  # the comparison is not between two constant sequences

@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_cache_equals_no_cache_past_block_size(preset):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(preset, vocab_size=200)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2: p.normal_(0, 0.3)
    prompt = torch.randint(0, 200, (3, 7))
    n = model.config.block_size + 10  # the window slides for the last 16 steps (prompt 7: from step block_size - 6 on)
    a = model.generate(prompt, n, temperature=0, use_cache=True)
    b = model.generate(prompt, n, temperature=0, use_cache=False)
    assert a.shape == (3, 7 + n) and torch.equal(a, b)
    streamed = list(model.stream(prompt[:1], n, temperature=0))
    assert streamed == a[0, 7:].tolist()

def test_gradients_match_transformers(tmp_path):
    "Same loss definition on both sides gives the same gradients, parameter by parameter (Conv1D transposed)."
    hf = hf_model(300, 32, 2, 4, 48)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path).train()
    hf.train()
    x, y = (t.contiguous() for t in torch.randint(0, 300, (4, 33)).split([32, 1], dim=1))
    targets = torch.cat([x[:, 1:], y], dim=1)
    targets[0, :10] = -100  # masked positions too
    ours(x, targets=targets)[1].backward()
    logits = hf(x).logits
    torch.nn.functional.cross_entropy(logits.reshape(-1, 300), targets.reshape(-1), ignore_index=-100).backward()
    hf_grads = dict(hf.named_parameters())
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    for name, p in ours.named_parameters():
        g = hf_grads[name].grad
        g = g.t() if name.endswith(conv1d) else g
        assert torch.allclose(p.grad, g, atol=1e-5, rtol=1e-4), name

def test_generate_edge_cases():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=50)).eval()
    prompt = torch.randint(0, 50, (2, 5))
    assert torch.equal(model.generate(prompt, 0), prompt)  # nothing to add
    g = lambda: torch.Generator().manual_seed(3)
    # top_k beyond the vocabulary and top_p=1 filter nothing: the same draws as plain sampling
    plain = model.generate(prompt, 8, generator=g())
    assert torch.equal(model.generate(prompt, 8, top_k=500, top_p=1.0, generator=g()), plain)
    assert torch.equal(model.generate(prompt, 8, top_k=1, generator=g()), model.generate(prompt, 8, temperature=0))
    assert list(model.stream(prompt[:1], 0)) == []
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(prompt, -1)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prompt, 3, top_k=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate(torch.tensor([[1, 2, 50]]), 3)
    with pytest.raises(ValueError, match="empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 3)

@pytest.mark.parametrize("error", [OSError("offline"), ConnectionError("refused")])
def test_from_pretrained_offline_says_what_to_download(tmp_path, monkeypatch, error):
    "No network: one sentence naming the files and where to get them, not a chained traceback from the Hub client."
    huggingface_hub = pytest.importorskip("huggingface_hub")
    def offline(*args, **kwargs): raise error
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)  # so that "gpt2" is a model id, not a folder that happens to exist here
    with pytest.raises(OSError) as info:
        GPT.from_pretrained("gpt2")
    message = str(info.value)
    assert "download config.json and model.safetensors from https://huggingface.co/gpt2" in message
    assert type(error).__name__ in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # raised from None
