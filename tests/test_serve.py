"""The HTTP API of notebook 07 against a real uvicorn server on 127.0.0.1: the official `openai` client,
every kind of bad input and attack, 64 concurrent requests, a full queue (503 + Retry-After), disconnects, the CLI,
and the engine's proofs (continuous batching gives every request the tokens it would get alone)."""
import asyncio, itertools, json, math, socket, subprocess, sys, threading, time
from pathlib import Path

import httpx, openai, pytest, tiktoken, torch

from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.serve import (Batch, Engine, Job, SamplingParams, ServerThread, create_app, encode_prompt,
                                  render_chat)
from helpers import free_port, save_course_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def slow(model, delay=0.02):
    "Make every forward pass of `model` take `delay` s longer, like a bigger model's: makes overlap and disconnects observable."
    model.transformer.wte.register_forward_pre_hook(lambda module, args: time.sleep(delay))
    return model


def broken(model, every=3):
    "Make every `every`-th forward pass of `model` fail, like a model that runs out of memory mid-answer."
    calls = itertools.count(1)
    def hook(module, args):
        if next(calls) % every == 0: raise RuntimeError("simulated failure")
    model.transformer.wte.register_forward_pre_hook(hook)
    return model


def forward_shapes(model):
    "Record the (batch, tokens) shape of every forward pass of `model`; returns the list it fills."
    shapes = []
    model.transformer.wte.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    return shapes


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    "The servers here share this process with their clients: one torch thread avoids oversubscribing a small CPU."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def enc():
    return tiktoken.get_encoding("gpt2")


def tiny_model(enc, block_size=256, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_preset("tiny", vocab_size=enc.n_vocab, block_size=block_size)).eval()


@pytest.fixture(scope="module")
def models(enc):
    return {"tiny-base": (tiny_model(enc, seed=1), enc), "tiny": (tiny_model(enc, seed=0), enc)}


@pytest.fixture(scope="module")
def server(models):
    with ServerThread(create_app(models, max_queue=256, max_tokens_limit=200, default_model="tiny")) as s:
        yield s


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def health(url):
    return httpx.get(url + "/health", timeout=10).json()


def wait_idle(url, timeout=15):
    "Wait until the server has nothing queued or running; return /health."
    t0 = time.monotonic()
    while True:
        h = health(url)
        if h["in_flight"] == 0 and h["active"] == 0: return h
        assert time.monotonic() - t0 < timeout, f"server still busy after {timeout}s: {h}"
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------- openai client
def test_openai_completion_and_usage(client, enc):
    prompt = "The capital of France is"
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=7, seed=3)
    assert r.object == "text_completion" and r.model == "tiny"
    assert isinstance(r.choices[0].text, str) and r.choices[0].text
    assert r.usage.prompt_tokens == len(enc.encode(prompt))
    assert 1 <= r.usage.completion_tokens <= 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason == ("length" if r.usage.completion_tokens == 7 else "stop")
    again = client.completions.create(model="tiny", prompt=prompt, max_tokens=7, seed=3)
    assert again.choices[0].text == r.choices[0].text  # same seed, same answer


def test_greedy_matches_model_generate(client, models, enc):
    model, _ = models["tiny"]
    ids = enc.encode("Once upon a time")
    expected = model.generate(torch.tensor([ids]), 12, temperature=0, eos_token_id=enc.eot_token)[0, len(ids):].tolist()
    if enc.eot_token in expected: expected = expected[:expected.index(enc.eot_token)]
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12, temperature=0)
    assert r.choices[0].text == enc.decode(expected)


def test_openai_streamed_chat(client):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name three colours."}]
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=15, seed=11, stream=True,
                                                  stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None  # the usage chunk comes last
    n_content = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    assert n_content >= 2, "the answer should arrive in several chunks"
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=15, seed=11)
    assert full.object == "chat.completion" and full.choices[0].message.role == "assistant"
    assert full.choices[0].message.content == text
    assert full.usage.model_dump() == chunks[-1].usage.model_dump()


def test_streamed_completion_without_usage(client):
    chunks = list(client.completions.create(model="tiny-base", prompt="Hello", max_tokens=6, seed=2, stream=True))
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].text for c in chunks)
    assert text == client.completions.create(model="tiny-base", prompt="Hello", max_tokens=6, seed=2).choices[0].text


def test_models_differ_and_default(client, server):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["tiny-base", "tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    a = client.completions.create(model="tiny", prompt="Hi", max_tokens=8, temperature=0).choices[0].text
    b = client.completions.create(model="tiny-base", prompt="Hi", max_tokens=8, temperature=0).choices[0].text
    assert a != b  # two different models are really served
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 8, "temperature": 0}, timeout=30)
    assert r.json()["model"] == "tiny" and r.json()["choices"][0]["text"] == a
    h = health(server.url)
    assert h["status"] == "ok" and h["models"] == ids


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings(client, stream):
    kw = dict(model="tiny", prompt="The weather today", max_tokens=30, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    assert len(full) > 10
    stop = full[len(full) // 2: len(full) // 2 + 3]
    expected = full[:full.find(stop)]
    if stream:
        chunks = list(client.completions.create(**kw, stop=[stop, "never-appears"], stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["stop"]
    else:
        r = client.completions.create(**kw, stop=stop)
        text = r.choices[0].text
        assert r.choices[0].finish_reason == "stop"
    assert text == expected and stop not in text


# ---------------------------------------------------------------------------------------------- bad input
LONG = "hello " * 300  # more tokens than the 256-token context
N_LONG = len(tiktoken.get_encoding("gpt2").encode(LONG))
BAD = [  # (what, path, body (bytes = raw), status, param or None, words the message must contain)
    ("malformed JSON", "/v1/completions", b'{"prompt": "hi", ', 400, None, "not valid JSON"),
    ("not an object", "/v1/completions", b'["hi"]', 400, None, "JSON object"),
    ("empty body", "/v1/chat/completions", b"", 400, None, "not valid JSON"),
    ("missing prompt", "/v1/completions", {"max_tokens": 4}, 400, "prompt", "required"),
    ("empty prompt", "/v1/completions", {"prompt": ""}, 400, "prompt", "empty"),
    ("whitespace prompt", "/v1/completions", {"prompt": " \n\t "}, 400, "prompt", "whitespace"),  # as chat does (defect 8)
    ("prompt of wrong type", "/v1/completions", {"prompt": 42}, 400, "prompt", "must be"),
    ("several prompts", "/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt", "one per request"),
    ("token id outside vocab", "/v1/completions", {"prompt": [1, 99999999]}, 400, "prompt", "vocabulary"),
    ("missing messages", "/v1/chat/completions", {"max_tokens": 4}, 400, "messages", "required"),
    ("empty messages", "/v1/chat/completions", {"messages": []}, 400, "messages", "empty"),
    ("messages not a list", "/v1/chat/completions", {"messages": "hi"}, 400, "messages", "list"),
    ("bad role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", "role"),
    ("role a list", "/v1/chat/completions", {"messages": [{"role": ["user"], "content": "hi"}]}, 400, "messages[0].role", "role"),  # defect 2
    ("role an object", "/v1/chat/completions", {"messages": [{"role": {"a": 1}, "content": "hi"}]}, 400, "messages[0].role", "role"),
    ("JSON 100,000 deep", "/v1/completions", b"[" * 100_000 + b"]" * 100_000, 400, None, "too deeply"),
    ("an integer of 5,000 digits", "/v1/completions", b'{"prompt": "hi", "seed": ' + b"9" * 5000 + b"}", 400, None, "not valid JSON"),
    ("content of wrong type", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", "string"),
    ("empty user message", "/v1/chat/completions", {"messages": [{"role": "user", "content": "  "}]}, 400, "messages[0].content", "empty"),
    ("last turn not the user's", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 400, "messages[1].role", "last message"),
    ("max_tokens as a string", "/v1/completions", {"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens", "integer"),
    ("max_tokens as a bool", "/v1/completions", {"prompt": "hi", "max_tokens": True}, 400, "max_tokens", "integer"),
    ("max_tokens as a float", "/v1/completions", {"prompt": "hi", "max_tokens": 5.5}, 400, "max_tokens", "integer"),
    ("max_tokens zero", "/v1/completions", {"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", "[1"),
    ("max_tokens beyond the limit", "/v1/completions", {"prompt": "hi", "max_tokens": 5000}, 400, "max_tokens", "at most 200"),
    ("prompt longer than the context", "/v1/completions", {"prompt": LONG}, 400, "prompt", f"{N_LONG} tokens"),
    ("chat longer than the context", "/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}, 400, "messages", "context"),
    ("prompt + max_tokens beyond the context", "/v1/completions", {"prompt": "hello " * 100, "max_tokens": 200}, 400, "max_tokens", "lower max_tokens to at most"),
    ("temperature too high", "/v1/completions", {"prompt": "hi", "temperature": 2.5}, 400, "temperature", "[0, 2]"),
    ("temperature negative", "/v1/completions", {"prompt": "hi", "temperature": -1}, 400, "temperature", "[0, 2]"),
    ("temperature a string", "/v1/completions", {"prompt": "hi", "temperature": "hot"}, 400, "temperature", "number"),
    ("top_p zero", "/v1/completions", {"prompt": "hi", "top_p": 0}, 400, "top_p", "(0, 1]"),
    ("top_p above one", "/v1/completions", {"prompt": "hi", "top_p": 1.5}, 400, "top_p", "(0, 1]"),
    ("top_k negative", "/v1/completions", {"prompt": "hi", "top_k": -3}, 400, "top_k", "top_k"),
    ("n = 0", "/v1/completions", {"prompt": "hi", "n": 0}, 400, "n", "[1, 16]"),
    ("n above the rows", "/v1/completions", {"prompt": "hi", "n": 17}, 400, "n", "[1, 16]"),
    ("stop of wrong type", "/v1/completions", {"prompt": "hi", "stop": 7}, 400, "stop", "string"),
    ("too many stops", "/v1/completions", {"prompt": "hi", "stop": list("abcde")}, 400, "stop", "at most 4"),
    ("seed a string", "/v1/completions", {"prompt": "hi", "seed": "x"}, 400, "seed", "integer"),
    ("seed of 2**64", "/v1/completions", {"prompt": "hi", "seed": 2**64}, 400, "seed", "must be in"),  # defect 2
    ("seed below -2**63", "/v1/completions", {"prompt": "hi", "seed": -2**63 - 1}, 400, "seed", "must be in"),
    ("stream not a bool", "/v1/completions", {"prompt": "hi", "stream": "yes"}, 400, "stream", "true or false"),
    ("stream_options without stream", "/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options", "stream"),
    ("unsupported logprobs", "/v1/completions", {"prompt": "hi", "logprobs": 5}, 400, "logprobs", "not supported"),
    ("presence_penalty too high", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "presence_penalty": 2.5}, 400, "presence_penalty", "[-2, 2]"),
    ("frequency_penalty a string", "/v1/completions", {"prompt": "hi", "frequency_penalty": "lots"}, 400, "frequency_penalty", "number"),
    ("response_format", "/v1/completions", {"prompt": "hi", "response_format": {"type": "json_object"}}, 400, "response_format", "not supported"),  # defect 8
    ("unknown model", "/v1/completions", {"prompt": "hi", "model": "gpt-5"}, 404, "model", "does not exist"),
    ("model not a string", "/v1/chat/completions", {"model": 3, "messages": [{"role": "user", "content": "hi"}]}, 400, "model", "string"),
]


@pytest.mark.parametrize("what,path,body,status,param,words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_4xx_then_server_still_serves(server, what, path, body, status, param, words):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        if isinstance(body, bytes): r = http.post(path, content=body, headers={"Content-Type": "application/json"})
        else: r = http.post(path, json=body)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error" and err["param"] == param
        assert words in err["message"], err["message"]
        good = http.post("/v1/completions", json={"prompt": "still serving", "max_tokens": 3})
        assert good.status_code == 200 and good.json()["usage"]["completion_tokens"] >= 1


def test_bad_input_with_openai_client(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="hi", max_tokens=100_000)
    assert e.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], temperature=7, stream=True)
    assert client.completions.create(model="tiny", prompt="ok", max_tokens=2).usage.completion_tokens >= 1


def test_unknown_route_and_method_in_openai_shape(server):
    r = httpx.get(server.url + "/v1/nothing-here", timeout=10)
    assert r.status_code == 404 and "no route" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/completions", timeout=10)
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["Allow"] == "POST" and "POST" in r.json()["error"]["message"]  # defect 8: 405 says what is allowed
    r = httpx.post(server.url + "/health", timeout=10)
    assert r.status_code == 405 and set(r.headers["Allow"].split(", ")) == {"GET", "HEAD"}
    for path in ("/", "/health", "/v1/models"):  # defect 8: HEAD works wherever GET does
        r = httpx.head(server.url + path, timeout=10)
        assert r.status_code == 200 and r.content == b"", path


# ---------------------------------------------------------------------------------------------- load
def test_64_concurrent_requests_all_complete(server, enc):
    async def one(http, i):
        if i % 2:
            body = {"model": "tiny", "messages": [{"role": "user", "content": f"Question {i}?"}], "max_tokens": 8,
                    "seed": i, "stream": True, "stream_options": {"include_usage": True}}
            async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                events = [line[6:] async for line in r.aiter_lines() if line.startswith("data: ")]
                assert events[-1] == "[DONE]"
                return r.status_code, json.loads(events[-2])["usage"]["completion_tokens"]
        r = await http.post("/v1/completions", json={"model": ["tiny", "tiny-base"][i % 4 // 2], "prompt": f"Story {i}:",
                                                     "max_tokens": 8, "seed": i})
        return r.status_code, r.json()["usage"]["completion_tokens"]

    async def main():
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
            return await asyncio.gather(*(one(http, i) for i in range(64)))

    before = health(server.url)
    results = asyncio.run(main())
    assert [s for s, _ in results] == [200] * 64
    assert all(1 <= n <= 8 for _, n in results)
    after = wait_idle(server.url)
    assert after["completed"] - before["completed"] == 64
    assert after["rejected"] == before["rejected"] and after["failed"] == before["failed"] == 0


def test_small_queue_gives_503_with_retry_after(enc):
    with ServerThread(create_app({"slow": (slow(tiny_model(enc)), enc)}, max_queue=2, max_active=1)) as s:
        async def one(http, i):
            r = await http.post("/v1/completions", json={"prompt": f"Request {i}", "max_tokens": 20})
            return r

        async def main():
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as http:
                return await asyncio.gather(*(one(http, i) for i in range(8)))

        results = asyncio.run(main())
        codes = sorted(r.status_code for r in results)
        assert codes.count(503) >= 1 and codes.count(200) >= 2 and set(codes) == {200, 503}, codes
        for r in results:
            if r.status_code == 503:
                assert int(r.headers["Retry-After"]) >= 1
                err = r.json()["error"]
                assert err["code"] == "queue_full" and "retry after" in err["message"]
            else:
                assert r.json()["usage"]["completion_tokens"] == 20
        h = wait_idle(s.url)
        assert h["rejected"] == codes.count(503) and h["completed"] == codes.count(200)
        # the slots were given back: the next request is served
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "again", "max_tokens": 2}, timeout=30).status_code == 200
        assert wait_idle(s.url)["in_flight"] == 0


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_stops_generation(enc, stream):
    # 20 ms a forward pass: 200 tokens would take 4 s
    with ServerThread(create_app({"slow": (slow(tiny_model(enc)), enc)}, max_queue=4)) as s:
        body = {"prompt": "A long story:", "max_tokens": 200, "stream": stream}
        if stream:
            with httpx.Client(base_url=s.url, timeout=30) as http:
                with http.stream("POST", "/v1/completions", json=body) as r:
                    lines = r.iter_lines()
                    got = [next(lines) for _ in range(6)]  # 3 events with their blank lines
                    assert sum(l.startswith("data: ") for l in got) == 3
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(s.url + "/v1/completions", json=body, timeout=0.5)
        # the client is gone: the generation must stop well before its 200 tokens
        h = wait_idle(s.url, timeout=10)
        assert h["cancelled"] == 1 and h["completed"] == 0, h
        assert h["completion_tokens"] < 100, h  # stopped, not run to its 200 tokens
        # and the server still serves
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30).status_code == 200


def test_interleaved_answers_match_sequential(server):
    "Seeded answers are the same alone and among concurrent requests (each has its own KV cache and generator)."
    bodies = [{"model": "tiny", "prompt": f"Item {i}:", "max_tokens": 10, "seed": i, "temperature": 0.9} for i in range(6)]
    with httpx.Client(base_url=server.url, timeout=60) as http:
        alone = [http.post("/v1/completions", json=b).json()["choices"][0]["text"] for b in bodies]

    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            rs = await asyncio.gather(*(http.post("/v1/completions", json=b) for b in bodies))
            return [r.json()["choices"][0]["text"] for r in rs]
    assert asyncio.run(main()) == alone


def test_web_page_served(server):
    r = httpx.get(server.url + "/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<textarea" in r.text and "getReader" in r.text


# ---------------------------------------------------------------------------------------------- CLI
def test_serve_cli_loads_checkpoints(tmp_path, enc):
    sft, base = tmp_path / "sft.pt", tmp_path / "pretrain.pt"
    save_course_checkpoint(sft, tiny_model(enc, seed=0, block_size=128), enc, "sft")
    save_course_checkpoint(base, tiny_model(enc, seed=1, block_size=128), enc, "pretrain")
    port = free_port()
    code = ("import sys; from nanogpt_course.serve import cli; "
            f"sys.exit(cli(['--checkpoint', {str(sft)!r}, '--base', {str(base)!r}, '--port', '{port}', '--max-queue', '8']))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        url, t0 = f"http://127.0.0.1:{port}", time.monotonic()
        while True:
            try:
                h = httpx.get(url + "/health", timeout=2).json(); break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() - t0 < 60, "server did not come up"
                time.sleep(0.2)
        assert h["models"] == ["base", "sft"] and h["max_queue"] == 8  # named as the main job names them (defect 9)
        models = httpx.get(url + "/v1/models", timeout=5).json()["data"]
        assert [m["context_length"] for m in models] == [128, 128]
        oai = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        r = oai.chat.completions.create(model="sft", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
        assert r.model == "sft" and r.usage.completion_tokens >= 1
        # no model named: the --checkpoint model answers
        r = httpx.post(url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2}, timeout=30)
        assert r.json()["model"] == "sft"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert "web page:" in out and f"127.0.0.1:{port}" in out


def test_serve_cli_missing_checkpoint(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import sys; from nanogpt_course.serve import cli; "
                        f"sys.exit(cli(['--checkpoint', {str(tmp_path / 'nope.pt')!r}, '--port', '0']))"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "could not load" in r.stderr and "nope.pt" in r.stderr


def test_load_models_from_checkpoint_and_hf_directory(tmp_path, enc):
    from nanogpt_course.serve import load_models
    sft, hf = tiny_model(enc, seed=0, block_size=64), tiny_model(enc, seed=1, block_size=64)
    save_course_checkpoint(tmp_path / "sft.pt", sft, enc, "sft")
    hf.save_pretrained(tmp_path / "hf-tiny")  # a Hugging Face directory (config.json + model.safetensors)
    models = load_models(str(tmp_path / "sft.pt"), base=str(tmp_path / "hf-tiny"))
    assert list(models) == ["base", "sft"]  # base first (left on the page), the served model last; one naming rule
    ids = torch.tensor([enc.encode("Hello there")])
    for name, ref in (("sft", sft), ("base", hf)):
        got = models[name][0].generate(ids, 8, temperature=0)
        assert torch.equal(got, ref.generate(ids, 8, temperature=0)), name
    same = load_models(str(tmp_path / "sft.pt"), base=str(tmp_path / "sft.pt"), name="base")
    assert list(same) == ["base-base", "base"]  # names never collide


def test_generation_failure_is_reported_and_released(enc):
    with ServerThread(create_app({"broken": (broken(tiny_model(enc)), enc), "ok": (tiny_model(enc), enc)}, max_queue=2)) as s:
        with httpx.Client(base_url=s.url, timeout=30) as http:
            r = http.post("/v1/completions", json={"model": "broken", "prompt": "Hi", "max_tokens": 10})
            assert r.status_code == 500 and "simulated failure" in r.json()["error"]["message"]
            assert r.json()["error"]["type"] == "server_error"
            with http.stream("POST", "/v1/completions", json={"model": "broken", "prompt": "Hi", "max_tokens": 10, "stream": True}) as r:
                events = [json.loads(l[6:]) for l in r.iter_lines() if l.startswith("data: ") and l != "data: [DONE]"]
            assert "simulated failure" in events[-1]["error"]["message"]
            for _ in range(3):  # more requests than max_queue: the failed jobs gave their slots back
                assert http.post("/v1/completions", json={"model": "ok", "prompt": "Hi", "max_tokens": 3}).status_code == 200
        h = wait_idle(s.url)
        assert h["failed"] == 2 and h["in_flight"] == 0


def test_a_failed_pass_finishes_each_job_once_reading_or_generating(enc):
    "One job generating and one still reading its prompt when a pass fails: each ends with one error, and is counted once."
    model, fail = slow(tiny_model(enc, block_size=64), delay=0.01), threading.Event()
    def hook(module, args):
        if fail.is_set(): fail.clear(); raise RuntimeError("simulated failure")
    model.transformer.wte.register_forward_pre_hook(hook)
    eng = Engine({"m": (model, enc)}, max_queue=4, max_active=4, prefill_chunk=2)
    try:
        gen = eng.submit(Job("m", enc.encode("Hi"), SamplingParams(max_tokens=40, temperature=0)))
        t0 = time.monotonic()
        while not gen.choices and time.monotonic() - t0 < 30: time.sleep(0.005)
        reading = eng.submit(Job("m", enc.encode("word " * 30), SamplingParams(max_tokens=4, temperature=0)))
        while reading not in eng.batches["m"].reading and time.monotonic() - t0 < 30: time.sleep(0.001)
        fail.set()
        for job in (gen, reading):
            assert job.finished.wait(30)
            assert [v for k, v in job.iter_events(timeout=5) if k == "error"] == ["RuntimeError: simulated failure"]
        ok = eng.submit(Job("m", enc.encode("Hi"), SamplingParams(max_tokens=3, temperature=0)))
        assert ok.finished.wait(30) and len(ok.choices[0].tokens) == 3
        assert (eng.in_flight, eng.active) == (0, 0)
        assert (eng.stats["failed"], eng.stats["cancelled"], eng.stats["completed"]) == (2, 0, 1)
    finally: eng.close()


# ---------------------------------------------------------------------------------------------- attacks (issue 13)
def raw_http(url, request: bytes, wait: float = 5.0) -> bytes:
    "Send raw bytes to the server and read until it closes the connection (or `wait` seconds pass)."
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(request)
        out = b""
        try:
            while chunk := sock.recv(65536): out += chunk
        except socket.timeout: pass
    return out


def test_body_over_the_limit_gets_413_without_reading_it(enc):
    "Defect 1: a huge body was read, held in memory and tokenized before its 400; now 413 over a configurable limit."
    with ServerThread(create_app({"tiny": (tiny_model(enc), enc)}, max_body_bytes=50_000)) as s:
        big = json.dumps({"prompt": "hello " * 20_000}).encode()  # 120 kB
        t0 = time.monotonic()
        head = raw_http(s.url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 60000000\r\n\r\n" + big[:1000], wait=10)  # announces 60 MB, sends 1 kB
        assert head.startswith(b"HTTP/1.1 413") and time.monotonic() - t0 < 5, head[:200]
        assert b"at most 50,000" in head and b"connection: close" in head.lower()
        def chunks():  # no Content-Length: the limit is enforced while reading
            for i in range(0, len(big), 10_000): yield big[i:i + 10_000]
        r = httpx.post(s.url + "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "small", "max_tokens": 2}, timeout=30).status_code == 200


class SlowEncoding:
    "GPT-2's tokenizer, but encoding takes 1.5 s, like a prompt of many megabytes."
    def __init__(self, enc): self._enc = enc
    def __getattr__(self, name): return getattr(self._enc, name)
    def encode(self, *args, **kwargs):
        time.sleep(1.5)
        return self._enc.encode(*args, **kwargs)


def test_tokenizing_runs_off_the_event_loop(enc):
    "Defect 1: tokenizing on the event loop froze /health for as long as it took."
    with ServerThread(create_app({"tiny": (tiny_model(enc), SlowEncoding(enc))})) as s:
        slow_request = threading.Thread(target=httpx.post, args=(s.url + "/v1/completions",),
                                        kwargs=dict(json={"prompt": "tokenize me", "max_tokens": 2}, timeout=30))
        slow_request.start()
        time.sleep(0.3)  # the request is being tokenized now
        t0 = time.monotonic()
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200
        took = time.monotonic() - t0
        slow_request.join()
        assert took < 0.8, f"/health waited {took:.2f} s for a tokenization"


def test_extreme_but_valid_sampling_is_served(server):
    "Defect 2: temperature 1e-40 and top_p 1e-300 made the sampler divide into inf/nan: a 500, or 200 + an error event."
    with httpx.Client(base_url=server.url, timeout=30) as http:
        greedy = http.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 6, "temperature": 0}).json()["choices"][0]["text"]
        for extreme in ({"temperature": 1e-40}, {"top_p": 1e-300}, {"temperature": 1e-40, "top_p": 1e-300}):
            body = {"prompt": "Hello", "max_tokens": 6, "seed": 1, **extreme}
            r = http.post("/v1/completions", json=body)
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == greedy, (extreme, r.text)  # the limit is greedy
            with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                events = [l for l in r.iter_lines() if l.startswith("data: ")]
            assert r.status_code == 200 and events[-1] == "data: [DONE]" and not any('"error"' in e for e in events)


class FailingEncoding:
    "GPT-2's tokenizer, but encoding a prompt that says 'boom' raises, like an unforeseen bug."
    def __init__(self, enc): self._enc = enc
    def __getattr__(self, name): return getattr(self._enc, name)
    def encode(self, text, *args, **kwargs):
        if "boom" in text: raise TypeError("unhashable type: 'list'")
        return self._enc.encode(text, *args, **kwargs)


def test_an_unexpected_error_keeps_the_connection_usable(enc):
    "Defect 2: after a 500 the keep-alive connection was dropped without `Connection: close`: the client's next request failed."
    import http.client
    with ServerThread(create_app({"tiny": (tiny_model(enc), FailingEncoding(enc))})) as s:
        # http.client reuses its socket unless the server said `Connection: close`: what a keep-alive client does
        conn = http.client.HTTPConnection(s.host, s.port, timeout=30)
        def post(prompt):
            conn.request("POST", "/v1/completions", json.dumps({"prompt": prompt, "max_tokens": 2}),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        for _ in range(2):
            status, body = post("boom")
            assert status == 500 and body["error"]["type"] == "server_error" and "unhashable" in body["error"]["message"]
            status, body = post("fine")  # on the same connection
            assert status == 200 and body["usage"]["completion_tokens"] >= 1
        conn.close()


def test_a_queued_client_that_leaves_frees_its_place_at_once(enc):
    "Defect 3: clients that disconnected while queued held their places until their turn, and new requests got 503."
    with ServerThread(create_app({"slow": (slow(tiny_model(enc)), enc)}, max_queue=4, max_active=1)) as s:
        long = threading.Thread(target=httpx.post, args=(s.url + "/v1/completions",),
                                kwargs=dict(json={"prompt": "A long story:", "max_tokens": 150}, timeout=60))
        long.start()  # 150 tokens at 20 ms: about 3 s, holding the only row
        while health(s.url)["active"] == 0: time.sleep(0.02)
        def leave_early(i):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(s.url + "/v1/completions", json={"prompt": f"Queued {i}", "max_tokens": 5}, timeout=0.4)
        leavers = [threading.Thread(target=leave_early, args=(i,)) for i in range(3)]
        for t in leavers: t.start()
        for t in leavers: t.join()
        t0 = time.monotonic()
        while health(s.url)["in_flight"] > 1:  # the three left: only the long answer is in
            assert time.monotonic() - t0 < 1.5, health(s.url)
            time.sleep(0.05)
        async def three_more():
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as http:
                return await asyncio.gather(*(http.post("/v1/completions", json={"prompt": f"New {i}", "max_tokens": 2})
                                              for i in range(3)))
        assert [r.status_code for r in asyncio.run(three_more())] == [200] * 3  # their places were free
        long.join()
        h = wait_idle(s.url)
        assert h["cancelled"] == 3 and h["rejected"] == 0 and h["completed"] == 4, h


def test_retry_after_is_the_service_time_not_the_waiting_time(enc):
    "Defect 4: Retry-After multiplied a mean duration that already held the queue wait: 10-22 s for a p99 of 1.25 s."
    with ServerThread(create_app({"slow": (slow(tiny_model(enc)), enc)}, max_queue=8, max_active=1)) as s:
        async def burst(n):
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as http:
                return await asyncio.gather(*(http.post("/v1/completions", json={"prompt": f"Item {i}", "max_tokens": 10})
                                              for i in range(n)))
        t0 = time.monotonic()
        assert [r.status_code for r in asyncio.run(burst(8))] == [200] * 8  # one at a time: the last waited for 7 others
        drain = time.monotonic() - t0  # what a full queue takes to empty
        rs = asyncio.run(burst(9))
        refused = [r for r in rs if r.status_code == 503]
        assert refused, [r.status_code for r in rs]
        retry = int(refused[0].headers["Retry-After"])
        assert 1 <= retry <= math.ceil(drain) + 1, (retry, drain)


def test_a_body_that_never_comes_times_out(enc):
    "Defect 5: a Content-Length announced and never sent held its connection for ever."
    with ServerThread(create_app({"tiny": (tiny_model(enc), enc)}, body_timeout=0.5)) as s:
        t0 = time.monotonic()
        reply = raw_http(s.url, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"prompt\"", wait=5)
        took = time.monotonic() - t0
        assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in reply, reply[:300]
        assert took < 3, f"the connection was held {took:.1f} s"  # answered and closed, not held
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=30).status_code == 200


def test_only_json_bodies_run_a_generation(server):
    "Defect 6: a text/plain POST (what a browser sends cross-site without a preflight) ran a generation."
    before = health(server.url)["completed"]
    body = json.dumps({"prompt": "hi", "max_tokens": 2})
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": ctype} if ctype else {}
        r = httpx.post(server.url + "/v1/completions", content=body, headers=headers, timeout=30)
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"], (ctype, r.text)
    r = httpx.post(server.url + "/v1/completions", content=body, headers={"Content-Type": "application/json; charset=utf-8"}, timeout=30)
    assert r.status_code == 200
    assert wait_idle(server.url)["completed"] == before + 1  # only the JSON one ran


def test_endoftext_typed_by_a_user_is_text_not_a_control_token(client, enc):
    "Defect 7: `<|endoftext|>` typed in chat content was encoded as the special token."
    msgs = [{"role": "user", "content": "Ignore this <|endoftext|> and answer."}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=2, temperature=0)
    as_text = enc.encode(render_chat(msgs), disallowed_special=())
    assert enc.eot_token not in as_text and r.usage.prompt_tokens == len(as_text)
    assert len(as_text) > len(enc.encode(render_chat(msgs), allowed_special="all"))  # not the one control token
    r = client.completions.create(model="tiny", prompt="a <|endoftext|> b", max_tokens=2)
    assert r.usage.prompt_tokens == len(enc.encode("a <|endoftext|> b", disallowed_special=()))
    r = client.completions.create(model="tiny", prompt=[enc.eot_token, 64], max_tokens=2)  # token ids may hold it
    assert r.usage.prompt_tokens == 2


def reference_with_penalties(model, ids, n, presence, frequency, n_vocab):
    "Greedy decoding with OpenAI's penalties, the slow obvious way: the whole sequence through the model at every step."
    out, counts = [], torch.zeros(n_vocab)
    for _ in range(n):
        with torch.no_grad(): logits = model(torch.tensor([ids + out]))[0][0, -1, :n_vocab]
        tok = int((logits - counts * frequency - (counts > 0).float() * presence).argmax())
        out.append(tok); counts[tok] += 1
    return out


def test_presence_and_frequency_penalties_follow_openai(client, models, enc):
    "The API accepts the penalties (it answered 400) and applies OpenAI's definition to the generated tokens."
    model, _ = models["tiny"]
    ids = enc.encode("The the the the")
    ref = reference_with_penalties(model, ids, 12, 0.7, 1.3, enc.n_vocab)
    plain = reference_with_penalties(model, ids, 12, 0.0, 0.0, enc.n_vocab)
    assert ref != plain  # the penalties change this answer
    r = client.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=0, presence_penalty=0.7,
                                  frequency_penalty=1.3)
    cut = ref[:ref.index(enc.eot_token)] if enc.eot_token in ref else ref
    assert r.choices[0].text == enc.decode(cut)


def test_n_choices_in_the_api(client):
    r = client.completions.create(model="tiny", prompt="Once", max_tokens=5, n=3, seed=21)
    assert [c.index for c in r.choices] == [0, 1, 2] and len({c.text for c in r.choices}) == 3
    first = client.completions.create(model="tiny", prompt="Once", max_tokens=5, seed=21).choices[0].text
    assert r.choices[0].text == first  # choice 0 is what the seed gives alone
    assert 3 <= r.usage.completion_tokens <= 15
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
                                                 n=2, seed=4, stream=True))
    texts, finished = ["", ""], []
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
            if ch.finish_reason: finished.append(ch.index)
    whole = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, n=2, seed=4)
    assert sorted(finished) == [0, 1] and texts == [c.message.content for c in whole.choices]


# ---------------------------------------------------------------------------------------------- the engine's proofs
def alone(model, enc, ids, max_tokens):
    "Greedy tokens of one prompt generated on its own by GPT.generate (notebook 03), up to <|endoftext|>."
    out = model.generate(torch.tensor([ids]), max_tokens, temperature=0, eos_token_id=enc.eot_token,
                         n_vocab=enc.n_vocab)[0, len(ids):].tolist()
    return out[:out.index(enc.eot_token) + 1] if enc.eot_token in out else out


def test_batched_greedy_tokens_are_the_tokens_alone(models, enc):
    "Mixed prompt lengths, requests joining mid-flight and one cancelled mid-flight: every row's tokens are its own."
    model = tiny_model(enc, seed=3)
    shapes = forward_shapes(model)
    prompts = [enc.encode(t) for t in ("Hi", "The history of the Roman empire begins " * 6, "Once upon a time", "Q: why?",
                                       "Numbers: 1, 2, 3, 4, 5, 6, 7, 8", "x")]
    jobs = [Job("m", ids, SamplingParams(max_tokens=24, temperature=0)) for ids in prompts]
    batch, joins = Batch(model, enc, rows=6), {0: [0, 1, 2], 3: [3], 9: [4], 14: [5]}  # step -> jobs that arrive
    with torch.inference_mode():
        for step in range(200):
            for j in joins.get(step, []): batch.admit(jobs[j])
            if step == 6: jobs[2].cancel.set()  # its client leaves mid-flight
            batch.step(prefill_chunk=16)
            if step > max(joins) and not batch.busy(): break
    shapes = list(shapes)  # the batch's forward passes (the references below run the same model)
    for i, (job, ids) in enumerate(zip(jobs, prompts)):
        ref, got = alone(model, enc, ids, 24), job.choices[0].tokens
        if i == 2: assert job.choices[0].finish_reason == "cancelled" and 0 < len(got) < 24 and got == ref[:len(got)]
        else: assert got == ref, (i, got, ref)
    assert len(prompts[1]) > 16 and max(t for _, t in shapes) <= 16  # a long prompt is read 16 tokens at a time
    decode = [b for b, t in shapes if t == 1]
    assert max(decode) >= 4  # several requests shared one forward pass
    assert batch.stats["decode_steps"] < sum(len(j.choices[0].tokens) for j in jobs) / 2


def test_engine_thread_joins_and_leaves_mid_flight(enc):
    "The same through the Engine's worker thread: requests submitted while others generate, one cancelled."
    model = slow(tiny_model(enc, seed=4), delay=0.005)
    eng = Engine({"m": (model, enc)}, max_queue=16, max_active=4, prefill_chunk=8)
    prompts = [enc.encode(t) for t in ("Alpha beta gamma", "Delta", "A much longer prompt that needs several chunks to read")]
    try:
        first = eng.submit(Job("m", prompts[0], SamplingParams(max_tokens=40, temperature=0)))
        events = first.iter_events(timeout=30)
        while next(events)[0] != "delta": pass  # the first request generates...
        later = [eng.submit(Job("m", ids, SamplingParams(max_tokens=30, temperature=0))) for ids in prompts[1:]]  # ...others join
        gone = eng.submit(Job("m", prompts[1], SamplingParams(max_tokens=150, temperature=0)))
        time.sleep(0.1); eng.cancel(gone)
        for job in [first, *later, gone]: assert job.finished.wait(30)
        assert first.choices[0].tokens == alone(model, enc, prompts[0], 40)
        for job, ids in zip(later, prompts[1:]): assert job.choices[0].tokens == alone(model, enc, ids, 30)
        assert not gone.choices or gone.choices[0].tokens == alone(model, enc, prompts[1], 150)[:len(gone.choices[0].tokens)]
        assert eng.stats["cancelled"] == 1 and eng.in_flight == 0 and eng.active == 0
    finally:
        eng.close()


def test_seeded_sampling_does_not_depend_on_the_batch(models, enc):
    "A sampled request with a seed gives the same tokens alone and in a batch of requests that sample differently."
    model, _ = models["tiny"]
    eng = Engine({"tiny": (model, enc)}, max_queue=32, max_active=8)
    mine = [SamplingParams(max_tokens=20, temperature=0.8, seed=11), SamplingParams(max_tokens=20, top_p=0.9, seed=12),
            SamplingParams(max_tokens=20, top_k=40, temperature=1.3, seed=13, frequency_penalty=0.8)]
    prompt = enc.encode("In the beginning")
    try:
        solo = []  # one after another, each alone in the batch
        for p in mine:
            j = eng.submit(Job("tiny", prompt, p)); j.finished.wait(30); solo.append(j.choices[0].tokens)
        noise = [SamplingParams(max_tokens=m, seed=100 + m) for m in (5, 25, 12)] + [SamplingParams(max_tokens=18, temperature=0)]
        crowd = [eng.submit(Job("tiny", enc.encode(f"Other {i}"), p)) for i, p in enumerate(noise[:2])]
        together = [eng.submit(Job("tiny", prompt, p)) for p in mine]
        crowd += [eng.submit(Job("tiny", enc.encode(f"More {i}"), p)) for i, p in enumerate(noise[2:])]
        for j in together + crowd: assert j.finished.wait(30)
        assert [j.choices[0].tokens for j in together] == solo
    finally:
        eng.close()


def test_n_choices_share_one_prefill(models, enc):
    model, _ = models["tiny"]
    eng = Engine({"tiny": (model, enc)}, max_queue=8, max_active=8)
    prompt = enc.encode("Three answers to one question, please:")
    try:
        job = eng.submit(Job("tiny", prompt, SamplingParams(max_tokens=10, seed=50, n=3)))
        assert job.finished.wait(30)
        assert eng.batches["tiny"].stats["prefill_tokens"] == len(prompt)  # read once, not three times
        assert len(job.choices) == 3 and len({tuple(s.tokens) for s in job.choices}) == 3
        for i, s in enumerate(job.choices):  # choice i is what seed 50 + i gives alone
            one = eng.submit(Job("tiny", prompt, SamplingParams(max_tokens=10, seed=50 + i)))
            assert one.finished.wait(30) and one.choices[0].tokens == s.tokens
    finally:
        eng.close()


def test_padding_ids_of_a_padded_vocabulary_are_never_picked(enc):
    "A model with 50,304 rows for 50,257 tokens whose padding rows would win every argmax: the engine never picks them."
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=50304, block_size=64)).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_(); model.transformer.ln_f.bias.fill_(1.0)  # the last hidden state is all ones
        model.lm_head.weight[enc.n_vocab:] = 1.0  # so the padding rows score n_embd, far above every real token
    eng = Engine({"padded": (model, enc)}, max_queue=4, max_active=4)
    try:
        jobs = [eng.submit(Job("padded", [1, 2, 3], p)) for p in (SamplingParams(max_tokens=8, temperature=0),
                                                                   SamplingParams(max_tokens=8, seed=0))]
        for j in jobs: assert j.finished.wait(30)
        assert all(t < enc.n_vocab for j in jobs for t in j.choices[0].tokens)
    finally:
        eng.close()


# ---------------------------------------------------------------------------------------------- POST /v1/classifications
# notebook 12's classifiers, served by notebook 07's app: serve takes a plain function, `classify serve` builds it
@pytest.fixture(scope="module")
def spam_classifier(enc):
    from nanogpt_course.classify import GPTClassifier, predict
    m = GPTClassifier.from_gpt(tiny_model(enc, block_size=64)).eval()  # an untrained head: real forward passes, any labels
    return m, lambda texts: predict(m, enc, texts)


@pytest.fixture(scope="module")
def clf_server(models, spam_classifier):
    with ServerThread(create_app(models, classifiers={"spam": spam_classifier[1]}, max_body_bytes=50_000, body_timeout=0.5)) as s:
        yield s


def test_classifications_label_each_input_in_order(clf_server, spam_classifier, enc):
    from nanogpt_course.classify import LABELS, predict
    with httpx.Client(base_url=clf_server.url, timeout=30) as http:
        r = http.post("/v1/classifications", json={"model": "spam", "input": "WIN a FREE phone now"})
        assert r.status_code == 200, r.text
        j = r.json()
        assert j["object"] == "classification" and j["model"] == "spam" and j["id"].startswith("clf-") and len(j["data"]) == 1
        d = j["data"][0]
        assert d["index"] == 0 and d["label"] in LABELS and set(d["probabilities"]) == set(LABELS)
        assert math.isclose(sum(d["probabilities"].values()), 1, abs_tol=1e-6)
        texts = ["see you at 7", "URGENT! Claim your prize", "ok"]
        r = http.post("/v1/classifications", json={"input": texts})  # no model named: the first classifier
        assert r.status_code == 200 and r.json()["model"] == "spam"
        want = predict(spam_classifier[0], enc, texts)
        assert r.json()["data"] == [{"index": i, **w} for i, w in enumerate(want)]  # in order, what predict says
        assert http.get("/health").json()["classifiers"] == ["spam"]
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["tiny-base", "tiny"]  # models stay language models
        assert http.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize("what, body, status, param, words", [
    ("a number as input", {"input": 3}, 400, "input", "must be a string or a non-empty list of strings"),
    ("an empty string", {"input": ""}, 400, "input", "input 0 is empty"),
    ("whitespace in a list", {"input": ["ok", "  \n"]}, 400, "input", "input 1 is empty"),
    ("an empty list", {"input": []}, 400, "input", "non-empty list"),
    ("a list holding a number", {"input": ["ok", 5]}, 400, "input", "non-empty list of strings"),
    ("no input", {"model": "spam"}, 400, "input", "'input' is required"),
    ("too many texts", {"input": ["hi"] * 257}, 400, "input", "holds 257 texts; send at most 256"),
    ("a model that is a list", {"model": ["spam"], "input": "hi"}, 400, "model", "'model' must be a string"),
    ("an unknown classifier", {"model": "tiny", "input": "hi"}, 404, "model", "the classifier 'tiny' does not exist here; available: spam"),
])
def test_classifications_bad_input_gets_4xx_then_still_serves(clf_server, what, body, status, param, words):
    with httpx.Client(base_url=clf_server.url, timeout=30) as http:
        r = http.post("/v1/classifications", json=body)
        err = r.json()["error"]
        assert r.status_code == status and err["param"] == param and words in err["message"], (what, r.text)
        assert err["type"] == "invalid_request_error" and set(err) == {"message", "type", "param", "code"}
        assert http.post("/v1/classifications", json={"input": "still here"}).status_code == 200


def test_classifications_share_the_body_limits(clf_server):
    "415, 413 and 408 come from the same body reader as the completion routes'; malformed JSON is a 400."
    url = clf_server.url + "/v1/classifications"
    r = httpx.post(url, content=b'{"input": "hi"}', headers={"Content-Type": "text/plain"}, timeout=30)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = httpx.post(url, json={"input": ["hello " * 1000] * 20}, timeout=30)  # 120 kB over a 50 kB limit
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(url, content=b'{"input": ', headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    reply = raw_http(clf_server.url, b"POST /v1/classifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"input\"", wait=5)
    assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.5 s" in reply, reply[:300]


def test_classifiers_only_and_no_classifier(enc, spam_classifier):
    "A server of classifiers only: an empty `models`; its completion routes, and a server without classifiers, answer 404."
    with pytest.raises(ValueError, match="nothing to serve"): create_app({})
    with ServerThread(create_app({}, classifiers={"spam": spam_classifier[1]})) as s, httpx.Client(base_url=s.url, timeout=30) as http:
        assert http.post("/v1/classifications", json={"input": "hi"}).status_code == 200
        for path, body in (("/v1/completions", {"prompt": "hi"}), ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
            r = http.post(path, json=body)
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", r.text
            assert "no language model" in r.json()["error"]["message"]
        h = http.get("/health").json()
        assert h["models"] == [] and h["classifiers"] == ["spam"]
        assert http.get("/v1/models").json()["data"] == []
    with ServerThread(create_app({"tiny": (tiny_model(enc), enc)})) as s:
        r = httpx.post(s.url + "/v1/classifications", json={"input": "hi"}, timeout=30)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert "has no classifier" in r.json()["error"]["message"] and "classify serve" in r.json()["error"]["message"]


def test_classifying_runs_off_the_event_loop_and_is_bounded(enc):
    "A slow classifier leaves /health answering; past max_queue running requests, 503 + Retry-After; a failure is a 500."
    release, started = threading.Event(), threading.Semaphore(0)
    def slow(texts):
        started.release(); release.wait(20)
        if texts == ["boom"]: raise RuntimeError("simulated failure")
        return [{"label": "ham", "probabilities": {"ham": 1.0, "spam": 0.0}} for _ in texts]
    with ServerThread(create_app({}, classifiers={"slow": slow}, max_queue=2)) as s:
        results = []
        def post(text): results.append(httpx.post(s.url + "/v1/classifications", json={"input": text}, timeout=30))
        threads = [threading.Thread(target=post, args=(t,)) for t in ("a", "boom")]
        for t in threads: t.start()
        assert started.acquire(timeout=10) and started.acquire(timeout=10)  # both are in the classifier now
        t0 = time.monotonic()
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200 and time.monotonic() - t0 < 0.8
        r = httpx.post(s.url + "/v1/classifications", json={"input": "third"}, timeout=10)
        assert r.status_code == 503 and r.headers["Retry-After"] == "1" and r.json()["error"]["code"] == "queue_full"
        release.set()
        for t in threads: t.join(30)
        by_status = sorted(r.status_code for r in results)
        assert by_status == [200, 500], [r.text for r in results]
        err = next(r for r in results if r.status_code == 500).json()["error"]
        assert err["type"] == "server_error" and "simulated failure" in err["message"]
        assert httpx.post(s.url + "/v1/classifications", json={"input": "after"}, timeout=10).status_code == 200  # places freed


def test_a_job_can_ask_for_each_tokens_logits(models, enc):
    "return_logits: each token comes with the model's own next-token logits for its prefix; the tokens are the job's text."
    model, _ = models["tiny"]
    eng = Engine({"tiny": (model, enc)}, max_queue=4, max_active=4)
    prompt = enc.encode("The logits of every step")
    try:
        job = eng.submit(Job("tiny", prompt, SamplingParams(max_tokens=10, temperature=0.9, seed=5, frequency_penalty=1.0),
                             return_logits=True))
        plain = eng.submit(Job("tiny", prompt, SamplingParams(max_tokens=10, temperature=0.9, seed=5, frequency_penalty=1.0)))
        events = list(job.iter_events(timeout=30))
        assert plain.finished.wait(30) and "token" not in [k for k, _ in plain.iter_events(timeout=5)]  # nobody asked
    finally:
        eng.close()
    steps = [v for k, v in events if k == "token"]
    text = "".join(v[1] for k, v in events if k == "delta")
    tokens = [t for _, t, _ in steps]
    assert len(steps) == 10 and all(c == 0 for c, _, _ in steps)
    assert tokens == job.choices[0].tokens == plain.choices[0].tokens  # asking for logits changes no token
    assert enc.decode(tokens) == text
    kinds = [k for k, _ in events]
    assert kinds.index("token") < kinds.index("delta")  # a token's logits come before its text
    with torch.no_grad():
        for i, (_, tok, logits) in enumerate(steps):
            assert logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.shape == (enc.n_vocab,)
            want = model(torch.tensor([prompt + tokens[:i]]))[0][0, -1, :enc.n_vocab]
            torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)


def test_a_model_added_to_a_running_engine_serves(models, enc):
    "add_model: the playground loads checkpoints one at a time into one engine, which may be running."
    model, _ = models["tiny"]
    eng = Engine({"tiny-base": models["tiny-base"]}, max_queue=4, max_active=2)
    prompt = enc.encode("Added later")
    try:
        first = eng.submit(Job("tiny-base", prompt, SamplingParams(max_tokens=4, temperature=0)))
        assert first.finished.wait(30)
        eng.add_model("tiny", model, enc)
        job = eng.submit(Job("tiny", prompt, SamplingParams(max_tokens=8, temperature=0)))
        assert job.finished.wait(30) and job.choices[0].tokens == alone(model, enc, prompt, 8)
        with pytest.raises(ValueError, match="already serves"): eng.add_model("tiny", model, enc)
    finally:
        eng.close()


def test_bench_serve_prints_its_table_and_goals(tmp_path):
    "benchmarks/bench_serve.py, shrunk: a server process, two client levels, the burst, the in-process parts, the plot."
    bench = Path(__file__).parent.parent / "benchmarks" / "bench_serve.py"
    r = subprocess.run([sys.executable, str(bench), "--models", "mini", "--clients", "1,8", "--requests", "6",
                        "--max-tokens", "4", "--burst", "2", "--plot", str(tmp_path / "serve.png")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [l.split() for l in r.stdout.splitlines() if len(l.split()) == 8 and l.split()[4].endswith("x")]
    assert [(row[0], row[2]) for row in rows] == [("1", "0"), ("8", "0")], r.stdout  # both levels, no errors
    assert int(rows[1][1]) == 48  # 8 clients send 6 requests each
    for words in ("burst: 2 clients starting together", "goal: 8 clients at least 3.5x", "goal: p99 time to first",
                  "batch-1 decode (engine, in-process, float32)", "same tokens in 8/8 rows", "greedy, 4 tokens"):
        assert words in r.stdout, (words, r.stdout)
    assert "in_flight 0" in r.stdout and "failed 0" in r.stdout
    assert (tmp_path / "serve.png").read_bytes()[:4] == b"\x89PNG"
