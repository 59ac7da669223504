"""The playground's command line, a real course checkpoint through `train.load_model`, and the notebook served by Voilà."""
import dataclasses, os, shutil, subprocess, sys, time, urllib.request
from pathlib import Path

import pytest, torch
from helpers import free_port, save_course_checkpoint

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "nbs" / "08_playground.ipynb"

def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nanogpt_course.playground", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})

def test_cli_prints_how_to_open():
    r = run_cli()
    assert r.returncode == 0, r.stderr
    assert f"jupyter lab {NB}" in r.stdout and "voila" in r.stdout
    assert "from nanogpt_course.playground import playground" in r.stdout

def test_cli_dispatcher_and_help():
    r = subprocess.run([sys.executable, "-c", "import sys; from nanogpt_course.cli import main; sys.exit(main(sys.argv[1:]))",
                        "playground", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--checkpoint" in r.stdout and "--voila" in r.stdout

def test_cli_missing_checkpoint_is_a_clear_error(tmp_path):
    r = run_cli("--checkpoint", str(tmp_path / "nope.pt"))
    assert r.returncode == 2 and "checkpoint not found" in r.stderr and "Traceback" not in r.stderr

def _course_checkpoint(tmp_path):
    from nanogpt_course.model import GPT, GPTConfig
    from nanogpt_course.tokenizer import get_tokenizer
    enc = get_tokenizer("gpt2")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=enc.n_vocab))
    run = tmp_path / "runs" / "demo" / "pretrain"
    save_course_checkpoint(run / "ckpt_000010.pt", model, enc, "pretrain", step=10)
    return model, run / "ckpt_000010.pt"

def test_cli_names_checkpoints_and_passes_them_on(tmp_path):
    _, ck = _course_checkpoint(tmp_path)
    r = run_cli("--checkpoint", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    assert "ckpt_000010.pt" in r.stdout and "NANOGPT_COURSE_PLAYGROUND_CHECKPOINTS=" in r.stdout

def test_app_on_a_real_checkpoint_found_by_env(tmp_path, monkeypatch):
    "The app finds a checkpoint through the env var the CLI sets, loads it with train.load_model, and generates greedily."
    from nanogpt_course.playground import playground, CHECKPOINTS_ENV
    model, ck = _course_checkpoint(tmp_path)
    monkeypatch.setenv(CHECKPOINTS_ENV, str(tmp_path / "runs"))
    app = playground(gpt2=False, max_tokens=6, temperature=0.0, prompt="Hello there").app
    assert any("ckpt_000010.pt" in k for k in app.choices)
    app.generate_button.click()
    assert app.wait(60)
    assert app.last_error is None, app.status.value
    enc = app.get_model(app.model_a.value)[1]
    ids = enc.encode("Hello there")
    want = model.generate(torch.tensor([ids]), 6, temperature=0, eos_token_id=enc.eot_token)[0, len(ids):].tolist()
    assert [s.id for s in app.steps[0]] == want


def test_classifier_checkpoints_are_not_offered_as_language_models(tmp_path, monkeypatch):
    "A classification run under runs/ (notebook 12's classifier.pt) sorted first and became the default model; Generate failed."
    from nanogpt_course.classify import GPTClassifier
    from nanogpt_course.playground import playground, find_checkpoints, CHECKPOINTS_ENV
    from nanogpt_course.tokenizer import get_tokenizer
    from nanogpt_course.train import save_checkpoint, CheckpointError
    from nanogpt_course.checkpoint import load_model
    from nanogpt_course.tokenizer import tokenizer_state
    model, ck = _course_checkpoint(tmp_path)
    clf = GPTClassifier.from_gpt(model)
    spam = tmp_path / "runs" / "12_classify" / "last" / "classifier.pt"  # sorts before runs/demo
    save_checkpoint(spam, {"model": clf.state_dict(), "config": dataclasses.asdict(clf.config), "kind": "classifier",
                           "tokenizer": tokenizer_state(get_tokenizer("gpt2")), "labels": list(clf.labels), "max_len": clf.max_len})
    assert list(find_checkpoints([tmp_path / "runs"]).values()) == [str(ck)]
    monkeypatch.setenv(CHECKPOINTS_ENV, str(tmp_path / "runs"))
    app = playground(gpt2=False, max_tokens=3, temperature=0.0, prompt="Hello").app
    assert list(app.choices) == [k for k in app.choices if "ckpt_000010.pt" in k] and "ckpt_000010.pt" in app.model_a.value
    app.generate_button.click()
    assert app.wait(60) and app.last_error is None, app.status.value
    named = find_checkpoints([spam])  # named as a file, it is listed; choosing it says what it is
    assert list(named.values()) == [str(spam)]
    with pytest.raises(CheckpointError, match="is a classifier .*load_classifier"): load_model(str(spam))


# ------------------------------------------------------------------------- the app generates on notebook 07's engine
def _demo_app(models, **kw):
    from nanogpt_course.playground import Playground
    app = Playground(models, **kw)
    app.prompt.value = "Once upon a time"
    return app


def _alone(model, enc, prompt, **kw):
    "The tokens of one Job on an engine of its own: what a pane must hold."
    from nanogpt_course.serve import Engine, Job, SamplingParams
    eng = Engine({"m": (model, enc)}, max_queue=1, max_active=1)
    try:
        job = eng.submit(Job("m", enc.encode(prompt), SamplingParams(**kw)))
        assert job.finished.wait(60)
        return job.choices[0].tokens
    finally: eng.close()


def test_side_by_side_panes_are_jobs_of_one_engine_with_the_penalties():
    "Two models compared run in the app's one engine; the penalty widgets reach the jobs; each pane is its Job alone."
    from nanogpt_course.playground import demo_model
    models = {"a": demo_model(seed=0), "b": demo_model(seed=1)}
    app = _demo_app(models, compare="b", max_tokens=30, temperature=0.0)
    try:
        app.frequency_penalty.value, app.presence_penalty.value = 2.0, 1.0
        app.generate_button.click()
        assert app.wait(60) and app.last_error is None, app.status.value
        assert list(app.engine.models) == ["a", "b"] and app.engine.stats["completed"] == 2
        for i, name in enumerate("ab"):
            m, e = models[name]
            got = [s.id for s in app.steps[i]]
            assert got == _alone(m, e, "Once upon a time", max_tokens=30, temperature=0, frequency_penalty=2.0, presence_penalty=1.0)
            assert got != _alone(m, e, "Once upon a time", max_tokens=30, temperature=0)  # the penalties changed the answer
            assert all(s.alternatives and 0 < s.prob <= 1 for s in app.steps[i])  # coloured from the logits events
    finally: app.close()


def test_stop_cancels_the_engine_jobs_of_both_panes():
    "The same model in both panes (two rows of one batch), slowed by a forward hook; Stop cancels both jobs."
    from nanogpt_course.playground import demo_model
    model, enc = demo_model(seed=0)
    model.transformer.wte.register_forward_pre_hook(lambda module, args: time.sleep(0.05))
    app = _demo_app({"slow": (model, enc)}, compare="slow", max_tokens=50, temperature=1.0, seed=3)
    try:
        app.generate_button.click()
        t0 = time.time()
        while min(len(s) for s in app.steps) < 2 and time.time() - t0 < 30: time.sleep(0.01)
        app.stop_button.click()
        assert app.wait(30) and "Stopped after" in app.status.value, app.status.value
        assert [j.choices[0].finish_reason for j in app._jobs] == ["cancelled", "cancelled"]
        assert app.engine.stats["cancelled"] == 2 and app.engine.in_flight == 0
        assert all(2 <= len(s) < 50 for s in app.steps)
        ids = [[s.id for s in steps] for steps in app.steps]
        n = min(map(len, ids))
        assert ids[0][:n] == ids[1][:n]  # same model, same seed: same tokens
    finally: app.close()


def test_a_failing_model_is_a_message_and_the_app_still_works():
    "A forward pass that fails mid-answer (like running out of memory) ends as 'Generation failed: ...', not a dead thread."
    from nanogpt_course.playground import demo_model
    model, enc = demo_model(seed=0)
    calls = [0]
    def fail(module, args):
        calls[0] += 1
        if calls[0] == 4: raise RuntimeError("simulated failure")
    hook = model.transformer.wte.register_forward_pre_hook(fail)
    app = _demo_app({"m": (model, enc)}, max_tokens=10, temperature=0.0)
    try:
        app.generate_button.click()
        assert app.wait(30) and "Generation failed: RuntimeError: simulated failure" in app.status.value, app.status.value
        assert app.generate_button.disabled is False and app.stop_button.disabled is True
        hook.remove()
        app.generate_button.click()
        assert app.wait(30) and app.last_error is None and len(app.steps[0]) == 10, app.status.value
    finally: app.close()


def test_max_tokens_is_cut_to_the_context_and_said():
    "The engine generates within the context: 500 tokens asked of a 64-token model give what the prompt leaves, and the status says so."
    from nanogpt_course.playground import demo_model
    model, enc = demo_model(seed=0)
    app = _demo_app({"m": (model, enc)}, max_tokens=500, temperature=0.0)
    try:
        app.generate_button.click()
        assert app.wait(60) and app.last_error is None, app.status.value
        room = model.config.block_size - len(enc.encode("Once upon a time"))
        want = model.generate(torch.tensor([enc.encode("Once upon a time")]), room, temperature=0,
                              eos_token_id=enc.eot_token)[0, -room:].tolist()
        assert enc.eot_token not in want and [s.id for s in app.steps[0]] == want  # it ran to the end of the context
        assert f"m stops at {room} tokens, where its context ends" in app.status.value
        app.prompt.value = "hi " * model.config.block_size
        app.generate_button.click()
        assert app.wait(30) and "leaving no room for an answer" in app.status.value and "shorten it" in app.status.value
    finally: app.close()


def test_seed_minus_one_draws_a_fresh_seed_each_time():
    from nanogpt_course.playground import demo_model
    app = _demo_app({"m": demo_model(seed=0)}, max_tokens=20, temperature=1.0, seed=-1)
    try:
        runs = []
        for _ in range(2):
            app.generate_button.click(); assert app.wait(30) and app.last_error is None
            runs.append([s.id for s in app.steps[0]])
        assert runs[0] != runs[1]
    finally: app.close()


def test_every_setting_of_the_app_reaches_its_widget():
    "Playground is split into a layout and a controller: every constructor setting still sets its widget, and a bad one is refused."
    from nanogpt_course.playground import Playground, PlaygroundLayout, demo_model, NONE
    models = {"a": demo_model(seed=0), "b": demo_model(seed=1)}
    settings = dict(mode="instruction", prompt="Name a colour.", max_tokens=9, temperature=0.3, top_k=7, top_p=0.85, seed=11,
                    presence_penalty=0.4, frequency_penalty=-0.6)
    app = Playground(models, compare="b", device="cpu", max_tokens_limit=99, update_every=0.2, **settings)
    assert isinstance(app, PlaygroundLayout) and app.widget.app is app and app.update_every == 0.2
    assert {k: getattr(app, k).value for k in settings} == settings
    assert (app.model_a.value, app.model_b.value, app.max_tokens.max) == ("a", "b", 99)
    assert app.context.layout.display == "" and app.panes[1].layout.display == ""  # instruction mode, two models
    layout = PlaygroundLayout(["a", "b"], **settings)  # the layout alone: the same widgets, buttons that do nothing
    assert {k: getattr(layout, k).value for k in settings} == settings and layout.model_b.value == NONE
    layout.generate_button.click()
    assert layout.status.value == "" and not hasattr(layout, "steps")
    with pytest.raises(TypeError, match="temprature"): Playground(models, temprature=0.5)
    app.generate_button.click()
    try: assert app.wait(60) and app.last_error is None and len(app.steps[0]) >= 1, app.status.value
    finally: app.close()


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name): return shutil.which(name)
    return None

@pytest.mark.skipif(shutil.which("voila") is None, reason="Voilà is not installed (pip install voila)")
def test_voila_serves_the_notebook():
    "Voilà runs the notebook as a page; with Chromium, a headless browser presses Generate and sees tokens arrive."
    port = free_port()
    # iopub_timeout as `nanogpt-course playground --voila` sets it: on a loaded machine outputs arrive late
    p = subprocess.Popen([shutil.which("voila"), str(NB), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
                          "--NotebookClient.iopub_timeout=60"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline, page = time.time() + 150, None
        while time.time() < deadline and page is None:
            try: page = urllib.request.urlopen(url, timeout=150).read().decode()
            except OSError: time.sleep(1)
        assert page is not None, "Voilà did not answer"
        # the executed notebook: a widget view (the app) and the outputs of its cells, no traceback
        assert "application/vnd.jupyter.widget-view+json" in page
        assert "GPTConfig(" in page
        assert "Traceback" not in page
        chromium = _chromium()
        try: from playwright.sync_api import sync_playwright, TimeoutError as PlaywrightTimeout
        except ImportError: sync_playwright = None
        if chromium is None or sync_playwright is None:  # the page check above passed; say the browser half did not run
            pytest.skip("Voila page checked; no Chromium/Playwright for the in-browser half")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                tab = browser.new_page(viewport={"width": 1300, "height": 1600})
                console = []  # what the page logged: the failure message shows it
                tab.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
                # one reload, as a user would: a CI run once got the page but not its widgets (a new kernel then
                # serves the reload); twice in a row fails, with the page's log
                for attempt in (1, 2):
                    tab.goto(url, timeout=150_000)
                    app = tab.locator(".widget-vbox").filter(has_text="nanogpt-course playground").last
                    try: app.wait_for(timeout=90_000); break
                    except PlaywrightTimeout:
                        if attempt == 2:
                            raise AssertionError("the playground's widgets never showed; the page logged:\n"
                                                 + "\n".join(console[-30:]))
                app.scroll_into_view_if_needed()
                app.get_by_role("button", name="Generate").click()
                t0 = time.time()
                while time.time() - t0 < 60 and "Done:" not in app.inner_text(): time.sleep(0.3)
                assert "Done:" in app.inner_text(), app.inner_text()[-500:]
                assert app.locator("span.tok").count() > 0
                assert "top alternatives" in app.locator("span.tok").first.get_attribute("title")
            finally: browser.close()
    finally:
        os.killpg(p.pid, 15)
        try: p.wait(20)
        except subprocess.TimeoutExpired: os.killpg(p.pid, 9)
