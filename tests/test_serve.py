"""The HTTP API of notebook 07 against a real uvicorn server on 127.0.0.1: the official `openai` client,
every kind of bad input, 64 concurrent requests, a full queue (503 + Retry-After), disconnects, and the CLI."""
import asyncio, json, subprocess, sys, time
from pathlib import Path

import httpx, openai, pytest, tiktoken, torch

from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.serve import ServerThread, create_app
from helpers import free_port, save_course_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class SlowGPT(GPT):
    "A GPT that takes `delay` seconds per token, like a bigger model would: makes overlap and disconnects observable."
    delay = 0.02

    def stream(self, *args, **kwargs):
        for tok in super().stream(*args, **kwargs):
            time.sleep(self.delay)
            yield tok


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


def tiny_model(enc, cls=GPT, block_size=256, seed=0):
    torch.manual_seed(seed)
    return cls(GPTConfig.from_preset("tiny", vocab_size=enc.n_vocab, block_size=block_size)).eval()


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
    ("prompt of wrong type", "/v1/completions", {"prompt": 42}, 400, "prompt", "must be"),
    ("several prompts", "/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt", "one per request"),
    ("token id outside vocab", "/v1/completions", {"prompt": [1, 99999999]}, 400, "prompt", "vocabulary"),
    ("missing messages", "/v1/chat/completions", {"max_tokens": 4}, 400, "messages", "required"),
    ("empty messages", "/v1/chat/completions", {"messages": []}, 400, "messages", "empty"),
    ("messages not a list", "/v1/chat/completions", {"messages": "hi"}, 400, "messages", "list"),
    ("bad role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", "role"),
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
    ("n = 2", "/v1/completions", {"prompt": "hi", "n": 2}, 400, "n", "must be 1"),
    ("stop of wrong type", "/v1/completions", {"prompt": "hi", "stop": 7}, 400, "stop", "string"),
    ("too many stops", "/v1/completions", {"prompt": "hi", "stop": list("abcde")}, 400, "stop", "at most 4"),
    ("seed a string", "/v1/completions", {"prompt": "hi", "seed": "x"}, 400, "seed", "integer"),
    ("stream not a bool", "/v1/completions", {"prompt": "hi", "stream": "yes"}, 400, "stream", "true or false"),
    ("stream_options without stream", "/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options", "stream"),
    ("unsupported logprobs", "/v1/completions", {"prompt": "hi", "logprobs": 5}, 400, "logprobs", "not supported"),
    ("unsupported penalty", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "presence_penalty": 1.0}, 400, "presence_penalty", "not supported"),
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
    slow = tiny_model(enc, SlowGPT)
    with ServerThread(create_app({"slow": (slow, enc)}, max_queue=2, max_active=1)) as s:
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
    slow = tiny_model(enc, SlowGPT)  # 20 ms a token: 200 tokens would take 4 s
    with ServerThread(create_app({"slow": (slow, enc)}, max_queue=4)) as s:
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
        assert h["models"] == ["pretrain", "sft"] and h["max_queue"] == 8
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
    assert list(models) == ["hf-tiny", "sft"]  # base first (left on the page), the served model last
    ids = torch.tensor([enc.encode("Hello there")])
    for name, ref in (("sft", sft), ("hf-tiny", hf)):
        got = models[name][0].generate(ids, 8, temperature=0)
        assert torch.equal(got, ref.generate(ids, 8, temperature=0)), name
    same = load_models(str(tmp_path / "sft.pt"), base=str(tmp_path / "sft.pt"))
    assert list(same) == ["sft-base", "sft"]  # names never collide


class BrokenGPT(GPT):
    "Fails after two tokens, like a model that runs out of memory mid-answer."
    def stream(self, *args, **kwargs):
        for i, tok in enumerate(super().stream(*args, **kwargs)):
            if i == 2: raise RuntimeError("simulated failure")
            yield tok


def test_generation_failure_is_reported_and_released(enc):
    with ServerThread(create_app({"broken": (tiny_model(enc, BrokenGPT), enc), "ok": (tiny_model(enc), enc)}, max_queue=2)) as s:
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
