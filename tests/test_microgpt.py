"""microGPT (notebook 11) against PyTorch: every operation's gradient, the whole model's loss and gradients, and
training with Adam, each equal to the same computation in float64 torch. The torch twin of the model lives here
(the notebook shows its own copy); `benchmarks/bench_microgpt.py` times against this one."""
import math, random, subprocess, sys
import pytest
import torch
import torch.nn.functional as F
from nanogpt_course.microgpt import (Adam, CHARS, Config, Value, encode, decode, gc_paused, gpt, graph_size, init_weights,
                                     load_names, loss_fn, new_cache, parameters, sample, train)


# ---- the same model written with torch tensors: all positions at once, a mask hiding the future ----
def to_torch(weights: dict, dtype: torch.dtype = torch.float64) -> dict:
    "microgpt's weights as torch leaf tensors (requires_grad), under the same names."
    return {k: torch.tensor([[p.data for p in row] for row in m], dtype=dtype).requires_grad_() for k, m in weights.items()}


def rmsnorm_t(x, eps=1e-5): return x * (x.pow(2).mean(-1, keepdim=True) + eps) ** -0.5


def gpt_t(W: dict, cfg: Config, idx: torch.Tensor) -> torch.Tensor:
    "Logits (T, vocab_size) for token ids idx (T,)."
    T, nh, hs = len(idx), cfg.n_head, cfg.n_embd // cfg.n_head
    x = W["wte"][idx] + W["wpe"][:T]  # (T, C)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    for i in range(cfg.n_layer):
        h, xn = f"h.{i}.", rmsnorm_t(x)
        q, k, v = ((xn @ W[h + f"attn.c_{n}"].T).view(T, nh, hs).transpose(0, 1) for n in "qkv")  # (nh, T, hs)
        att = (q @ k.transpose(1, 2) * (1 / math.sqrt(hs))).masked_fill(future, float("-inf")).softmax(-1)  # (nh, T, T)
        y = (att @ v).transpose(0, 1).reshape(T, cfg.n_embd)  # (T, C)
        x = x + y @ W[h + "attn.c_proj"].T
        x = x + torch.relu(rmsnorm_t(x) @ W[h + "mlp.c_fc"].T) @ W[h + "mlp.c_proj"].T
    return rmsnorm_t(x) @ W["lm_head"].T


def loss_t(W: dict, cfg: Config, tokens: list) -> torch.Tensor:
    t = torch.tensor(tokens[:min(cfg.block_size, len(tokens) - 1) + 1])
    return F.cross_entropy(gpt_t(W, cfg, t[:-1]), t[1:])


def train_t(W: dict, cfg: Config, names: list, steps: int, lr: float = 1e-2, seed: int = 0) -> list:
    "microgpt.train's twin: the same names in the same order, torch.optim.Adam with the same settings and schedule."
    order = random.Random(seed).sample(names, len(names))
    opt, losses = torch.optim.Adam(W.values(), lr=lr, betas=(0.9, 0.99), eps=1e-8), []
    for step in range(steps):
        loss = loss_t(W, cfg, encode(order[step % len(order)]))
        opt.zero_grad(); loss.backward()
        for group in opt.param_groups: group["lr"] = lr * (1 - step / steps)
        opt.step(); losses.append(loss.item())
    return losses


NAMES = ["emma", "olivia", "ava", "isabella", "sophia", "charlotte", "mia", "amelia", "harper", "evelyn", "abigail",
         "emily", "elizabeth", "mila", "ella", "avery", "sofia", "camila", "aria", "scarlett", "maximiliano", "jo"]


def close(x: float, y: float, rel: float = 1e-12) -> bool: return abs(x - y) <= rel * max(1.0, abs(y))


# ---- every operation ----
OPS = {
    "a+b": lambda a, b: a + b, "a+n": lambda a, b: a + 2.5, "n+a": lambda a, b: 2.5 + a,
    "a-b": lambda a, b: a - b, "a-n": lambda a, b: a - 2.5, "n-a": lambda a, b: 2.5 - a,
    "a*b": lambda a, b: a * b, "a*n": lambda a, b: a * 1.5, "n*a": lambda a, b: 1.5 * a,
    "a/b": lambda a, b: a / b, "a/n": lambda a, b: a / 1.5, "n/a": lambda a, b: 1.5 / a,
    "a**3": lambda a, b: a ** 3, "a**-2": lambda a, b: a ** -2, "a**0": lambda a, b: a ** 0, "n**a": lambda a, b: 1.7 ** a,
    "-a": lambda a, b: -a, "exp": lambda a, b: a.exp(), "tanh": lambda a, b: a.tanh(), "relu": lambda a, b: a.relu(),
    "a*a": lambda a, b: a * a, "mix": lambda a, b: (a * b - a / b).tanh() * (b - a).exp() + (-a).relu() / (2 + b * b),
}
POSITIVE_OPS = {"log": lambda a, b: a.log(), "a**0.5": lambda a, b: a ** 0.5, "a**b": lambda a, b: a ** b,
                "a**1.5": lambda a, b: a ** 1.5, "log-mix": lambda a, b: (a * (b * b + 1)).log() + a ** b - 3 / a}


def check_op(f, x: float, y: float):
    a, b = Value(x), Value(y)
    out = f(a, b); out.backward()
    ta, tb = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (x, y))
    tout = f(ta, tb)
    if tout.requires_grad: tout.backward()
    assert close(out.data, tout.item()), (out.data, tout.item())
    for v, t in ((a, ta), (b, tb)):
        tg = 0.0 if t.grad is None else t.grad.item()
        assert close(v.grad, tg), (v.grad, tg)


@pytest.mark.parametrize("name", list(OPS))
def test_op_gradients_equal_torch(name):
    rng = random.Random(name)
    for _ in range(50):
        check_op(OPS[name], rng.uniform(0.3, 3.0) * rng.choice((-1, 1)), rng.uniform(0.3, 3.0) * rng.choice((-1, 1)))


@pytest.mark.parametrize("name", list(POSITIVE_OPS))
def test_op_gradients_equal_torch_on_positive_inputs(name):
    rng = random.Random(name)
    for _ in range(50): check_op(POSITIVE_OPS[name], rng.uniform(0.05, 3.0), rng.uniform(-2.0, 2.0))


def test_relu_at_zero_and_pow_at_zero_match_torch():
    check_op(lambda a, b: a.relu(), 0.0, 1.0)
    check_op(lambda a, b: a ** 2, 0.0, 1.0)
    v = Value(0.0); (v ** 0.5).backward()
    t = torch.tensor(0.0, dtype=torch.float64, requires_grad=True); (t ** 0.5).backward()
    assert v.grad == t.grad.item() == math.inf


def test_backward_accumulates_into_leaves_only_like_torch():
    a, b = Value(1.5), Value(-0.7)
    c = a * b
    L = (c * c + a).tanh()
    L.backward(); first = (a.grad, b.grad)
    L.backward()  # leaves add up; c (made up) must not carry its old gradient into the second pass
    assert (a.grad, b.grad) == pytest.approx((2 * first[0], 2 * first[1]), rel=1e-15)
    ta, tb = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (1.5, -0.7))
    tL = ((ta * tb) ** 2 + ta).tanh()
    tL.backward(retain_graph=True); tL.backward()
    assert close(a.grad, ta.grad.item()) and close(b.grad, tb.grad.item())


def test_backward_handles_graphs_deeper_than_the_recursion_limit():
    x0 = Value(0.5); x = x0
    for _ in range(3 * sys.getrecursionlimit()): x = (x * 1.0) + 0.0
    x.backward()
    assert x0.grad == 1.0


def test_bad_inputs_get_clear_errors():
    with pytest.raises(TypeError, match="one int or float"): Value([1.0])
    with pytest.raises(TypeError): Value(1.0) + "a"
    with pytest.raises(ValueError, match="log needs a number above 0"): Value(0.0).log()
    with pytest.raises(ValueError, match="not real"): Value(-2.0) ** 0.5
    with pytest.raises(ZeroDivisionError, match="divides by zero"): 1 / Value(0.0)
    with pytest.raises(ValueError, match="base must be above 0"): Value(-1.0) ** Value(2.0)
    with pytest.raises(OverflowError, match="subtract the largest"): Value(710.0).exp()


# ---- the whole model ----
CONFIGS = [Config(), Config(n_layer=2, n_head=4, n_embd=16, block_size=8), Config(n_layer=1, n_head=1, n_embd=8, block_size=4),
           Config(n_layer=3, n_head=2, n_embd=12, block_size=12)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"L{c.n_layer}-H{c.n_head}-C{c.n_embd}-T{c.block_size}")
@pytest.mark.parametrize("name", ["isabella", "maximiliano", "jo"])
def test_model_loss_and_every_gradient_equal_torch(cfg, name):
    weights = init_weights(cfg, seed=3, std=0.3)  # bigger weights than training starts from: sharper attention
    W = to_torch(weights)
    loss = loss_fn(weights, cfg, encode(name)); loss.backward()
    tloss = loss_t(W, cfg, encode(name)); tloss.backward()
    assert abs(loss.data - tloss.item()) < 1e-9
    for k, m in weights.items():
        g = torch.tensor([[p.grad for p in row] for row in m], dtype=torch.float64)
        assert (g - W[k].grad).abs().max().item() < 1e-9, k
    assert sum(p.grad != 0 for p in parameters(weights)) > len(parameters(weights)) // 3  # the check compared real gradients


def test_attention_is_causal():
    cfg, weights = Config(), init_weights(Config(), seed=1, std=0.3)
    def logits(name):  # every position's logits, one position at a time through the cache
        cache = new_cache(cfg)
        return [[l.data for l in gpt(weights, cfg, t, p, cache)] for p, t in enumerate(encode(name)[:-1])]
    a, b = logits("emma"), logits("emily")  # the same first three inputs: '.', 'e', 'm'
    assert a[:3] == b[:3] and a[3] != b[3]
    # and the torch twin, which sees the whole name at once, agrees at every position
    W = to_torch(weights)
    for name, rows in (("emma", a), ("emily", b)):
        assert (gpt_t(W, cfg, torch.tensor(encode(name)[:-1])) - torch.tensor(rows, dtype=torch.float64)).abs().max() < 1e-12


def test_training_steps_give_torch_adams_losses():
    cfg = Config(n_layer=2, n_head=2, n_embd=8, block_size=16)
    weights = init_weights(cfg, seed=5)
    W = to_torch(weights)
    got, want = train(weights, cfg, NAMES, steps=8, lr=3e-2, seed=2), train_t(W, cfg, NAMES, steps=8, lr=3e-2, seed=2)
    assert got == pytest.approx(want, abs=1e-9, rel=0)
    assert got[-1] != pytest.approx(got[0], abs=1e-3)
    for k, m in weights.items():
        assert (torch.tensor([[p.data for p in row] for row in m], dtype=torch.float64) - W[k].detach()).abs().max() < 1e-9


def test_training_learns_the_names():
    cfg = Config(n_embd=8, n_head=2, block_size=16)
    weights = init_weights(cfg, seed=0)
    names = ["anna", "hannah", "ana", "nan"] * 3
    before = sum(loss_fn(weights, cfg, encode(n)).data for n in names[:4]) / 4
    train(weights, cfg, names, steps=60, lr=2e-2)
    after = sum(loss_fn(weights, cfg, encode(n)).data for n in names[:4]) / 4
    assert before > math.log(27) - 0.3 and after < 1.5, (before, after)


def test_sample_is_repeatable_letters_only_and_temperature_is_checked():
    cfg = Config()
    weights = init_weights(cfg, seed=0)
    made = [sample(weights, cfg, random.Random(i), temperature=1.0) for i in range(10)]
    assert made == [sample(weights, cfg, random.Random(i), temperature=1.0) for i in range(10)]
    assert all(set(n) <= set(CHARS[1:]) and len(n) <= cfg.block_size for n in made)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be above 0"): sample(weights, cfg, random.Random(0), bad)


def test_low_temperature_picks_the_likeliest_letter():
    cfg = Config()
    weights = init_weights(cfg, seed=0)
    for p in weights["lm_head"][5]: p.data = 0.0  # make 'e' (id 5) by far the likeliest token everywhere
    weights["lm_head"][5][0].data = 5.0; weights["wte"][0][0].data = weights["wte"][5][0].data = 5.0
    assert set(sample(weights, cfg, random.Random(0), temperature=0.01)) == {"e"}


def test_config_tokens_and_optimizer_errors():
    with pytest.raises(ValueError, match="multiple of n_head"): Config(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="at least 1"): Config(block_size=0)
    with pytest.raises(ValueError, match="a-z"): encode("Émile")
    with pytest.raises(ValueError, match="a-z"): encode("")
    assert decode(encode("zoe")) == "zoe"
    cfg, weights = Config(), init_weights(Config())
    with pytest.raises(ValueError, match="from 0 to 26"): loss_fn(weights, cfg, [0, 30])
    with pytest.raises(ValueError, match="at least 2 tokens"): loss_fn(weights, cfg, [0])
    with pytest.raises(ValueError, match="steps"): train(weights, cfg, NAMES, steps=0)
    with pytest.raises(ValueError, match="names is empty"): train(weights, cfg, [], steps=1)
    with pytest.raises(ValueError, match="lr must be above 0"): Adam(parameters(weights), lr=-1)
    with pytest.raises(ValueError, match="betas"): Adam(parameters(weights), betas=(0.9, 1.0))


def test_load_names(tmp_path, monkeypatch):
    f = tmp_path / "names.txt"
    f.write_text("emma\nolivia\n\nava")  # a blank line, no final newline
    assert load_names(str(f)) == ["emma", "olivia", "ava"]
    monkeypatch.setenv("NANOGPT_COURSE_DATA", str(tmp_path))
    assert load_names() == ["emma", "olivia", "ava"]
    f.write_text("emma\nJosé\n")
    with pytest.raises(ValueError, match="name 2, 'José'"): load_names(str(f))
    with pytest.raises(FileNotFoundError, match="download https://.*names.txt"): load_names(str(tmp_path / "none.txt"))


def test_gc_paused_restores_the_collector():
    import gc
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with gc_paused():
            assert not gc.isenabled()
            raise RuntimeError("boom")
    assert gc.isenabled()


def test_graph_size_counts_each_value_once():
    a = Value(2.0)
    assert graph_size(a * a + a) == 3  # a, a*a, (a*a)+a


def test_module_imports_only_the_standard_library():
    code = ("import sys; before = set(sys.modules); import nanogpt_course.microgpt; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before} - set(sys.stdlib_module_names) - {'nanogpt_course'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"nanogpt_course.microgpt imported {out}"
