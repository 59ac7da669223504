"""The web page of notebook 07 in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright)
loads `/`, types an instruction, clicks Generate and watches the answers stream in, base and fine-tuned side by side."""
import os, shutil, time

import httpx, pytest, tiktoken, torch

from nanogpt_course.model import GPT, GPTConfig
from nanogpt_course.serve import ServerThread, create_app

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's `chromium` (scripts/setup.sh does) to run the browser test",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def slow(model, delay=0.015):
    "15 ms more per forward pass, so that the page is seen mid-stream."
    model.transformer.wte.register_forward_pre_hook(lambda module, args: time.sleep(delay))
    return model


@pytest.fixture(scope="module")
def server():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server shares this process with Playwright; restored below
    enc = tiktoken.get_encoding("gpt2")
    models = {}
    for name, seed in (("base", 1), ("fine-tuned", 0)):
        torch.manual_seed(seed)
        models[name] = (slow(GPT(GPTConfig.from_preset("tiny", vocab_size=enc.n_vocab, block_size=256)).eval()), enc)
    try:
        with ServerThread(create_app(models, max_queue=16)) as s:
            yield s
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:  # Playwright gives the browser a fresh, empty profile
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def test_page_streams_answers_side_by_side(server, browser):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_selector(".col >> nth=1")  # one column per model
    assert page.locator(".col h2 span").all_inner_texts() == ["base", "fine-tuned"]
    page.fill("#instruction", "Name three colours.")
    page.fill("#max_tokens", "40")
    page.fill("#seed", "5")
    page.click("#generate")
    # text is on the page while the answer is still being generated: it streams
    page.wait_for_function("""() => [...document.querySelectorAll('.output')].some(
        o => o.dataset.state === 'streaming' && o.textContent.length > 0)""", timeout=20000)
    page.wait_for_function("""() => [...document.querySelectorAll('.output')].every(o => o.dataset.state === 'done')""",
                           timeout=60000)
    outs = page.locator(".output")
    texts = outs.all_text_contents()
    chunks = [int(outs.nth(i).get_attribute("data-chunks")) for i in range(2)]
    assert all(t.strip() for t in texts) and all(c > 1 for c in chunks), (texts, chunks)
    assert texts[0] != texts[1]  # two different models answered
    assert "completion tokens" in page.locator(".meta").first.inner_text()
    # what the page shows is exactly what the API gives for the same request
    for name, text in zip(["base", "fine-tuned"], texts):
        r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "model": name, "messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 40,
            "seed": 5, "temperature": 0.7, "top_p": 0.95, "top_k": 50})
        assert r.json()["choices"][0]["message"]["content"] == text
    assert errors == []
    page.close()


def test_stop_button_and_errors_on_page(server, browser):
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector(".col >> nth=1")
    page.fill("#instruction", "Tell a long story.")
    page.fill("#max_tokens", "200")
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('.output').textContent.length > 0", timeout=20000)
    page.click("#stop")
    page.wait_for_function("""() => [...document.querySelectorAll('.output')].every(o => o.dataset.state === 'stopped')""",
                           timeout=10000)
    # closing the fetch stopped the generations on the server too
    t0 = time.monotonic()
    while (h := httpx.get(server.url + "/health", timeout=5).json())["in_flight"]:
        assert time.monotonic() - t0 < 5, h
        time.sleep(0.05)
    assert h["cancelled"] >= 2
    # a bad request shows the server's error message on the page
    page.fill("#temperature", "9")
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('.output').dataset.state === 'error'", timeout=10000)
    assert "temperature" in page.locator(".meta").first.inner_text()
    page.close()
