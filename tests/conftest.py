"""Shared pytest settings. Under CI (`CI=true`) a skipped test is a failure: a browser, server or multi-process test
that cannot run there must say so loudly, not vanish into "2 skipped". The exception is a test marked `cuda`
(GPU-only, it skips itself without CUDA), which `scripts/test.sh` deselects with `-m "not cuda"` anyway.
A GPU-only module marks itself with `pytestmark = [pytest.mark.cuda, pytest.mark.skipif(...)]`, not with a
module-level `pytest.skip`: a module that skips while it is imported has no markers to read, so it fails under CI."""
import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU and skips itself without one (CI runs `-m \"not cuda\"`)")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _reason(rep) -> str:
    "The reason a skipped report gives (pytest stores it as (path, line, 'Skipped: reason'))."
    r = rep.longrepr[2] if isinstance(rep.longrepr, tuple) and len(rep.longrepr) == 3 else str(rep.longrepr)
    return r.removeprefix("Skipped: ")


def _message(what: str, reason: str) -> str:
    return (f"{what} was skipped under CI=true, which counts as a failure: {reason}\n"
            "Install what it needs in CI (scripts/setup.sh), or mark it `cuda` if it needs a GPU.")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if (rep.skipped and _in_ci() and not hasattr(rep, "wasxfail")  # an xfail is reported as a skip: leave it alone
            and item.get_closest_marker("cuda") is None):
        rep.outcome, rep.longrepr = "failed", _message(item.nodeid, _reason(rep))
    return rep


class SkippedAtImport(pytest.Item):
    "Stands in for a module that skipped while it was imported, and fails: the rest of the session still runs."
    def __init__(self, *, message: str, **kw):
        super().__init__(**kw)
        self.message = message
    def runtest(self): pytest.fail(self.message, pytrace=False)
    def reportinfo(self): return self.path, None, self.name


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    rep = yield  # pytest.skip(allow_module_level=True) or a module-level importorskip skips here, at collection
    if rep.skipped and _in_ci() and isinstance(collector, pytest.Module):
        item = SkippedAtImport.from_parent(collector, name="<module skipped at import>", message=_message(collector.nodeid, _reason(rep)))
        rep = pytest.CollectReport(rep.nodeid, "passed", None, [item])
    return rep


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "Shards of a small synthetic corpus, tokenized with a 320-token BPE trained here (pretraining tests share them)."
    import random
    from nanogpt_course.data import prepare
    from nanogpt_course.tokenizer import BPETokenizer
    d = tmp_path_factory.mktemp("pretrain")
    rnd = random.Random(0)
    words = "the cat sat on a mat while some dog ran to its home and every bird sang in morning light".split()
    docs = [" ".join(rnd.choice(words) for _ in range(rnd.randint(20, 120))) + "." for _ in range(1500)]
    tok = BPETokenizer.train("\n".join(docs[:300]), 320)
    tok.save(d / "tok.json")
    prepare(docs, d / "data", tokenizer=d / "tok.json", shard_tokens=30_000, val_tokens=4_000, num_proc=1, progress=False)
    return d
