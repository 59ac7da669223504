"""The CI machinery: under CI=true a skipped test fails (tests/conftest.py), and scripts/setup.sh installs Chromium
when run as root or through sudo. Both run as subprocesses on small files written here; apt-get and sudo are stubs."""
import os, shutil, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SKIPPING = '''
import pytest
def test_skips_when_called(): pytest.skip("no browser here")
@pytest.mark.skipif(True, reason="no server here")
def test_skipif_marker(): pass
@pytest.mark.cuda
def test_gpu_only(): pytest.skip("no CUDA")
@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug(): assert False
def test_passes(): pass
'''


def _pytest(folder: Path, ci: str | None, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci is not None: env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", *args], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=120)


def _project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_some.py").write_text(SKIPPING)
    (tmp_path / "test_module_skip.py").write_text('import pytest\npytest.skip("no Chromium", allow_module_level=True)\n')
    return tmp_path


def test_a_skip_fails_under_ci(tmp_path):
    r = _pytest(_project(tmp_path), "true")
    out = r.stdout
    assert r.returncode == 1, out
    assert "FAILED test_some.py::test_skips_when_called" in out
    assert "test_some.py::test_skips_when_called was skipped under CI=true, which counts as a failure: no browser here" in out
    assert "ERROR test_some.py::test_skipif_marker" in out and "no server here" in out  # skipped in setup: an error
    # a module that skips while it is imported fails too, and the rest of the session still runs
    assert "FAILED test_module_skip.py::<module skipped at import>" in out and "no Chromium" in out
    assert "PASSED test_some.py::test_passes" in out
    assert "SKIPPED [1] test_some.py" in out and "no CUDA" in out  # marked cuda: may skip
    assert "XFAIL test_some.py::test_known_bug" in out  # an expected failure is not a skip
    assert "2 failed, 1 passed, 1 skipped, 1 xfailed, 1 error" in out


def test_skips_stay_skips_outside_ci_and_cuda_tests_are_deselected(tmp_path):
    r = _pytest(_project(tmp_path), None)
    assert r.returncode == 0, r.stdout
    assert "1 passed, 4 skipped, 1 xfailed" in r.stdout
    r = _pytest(tmp_path, "true", "-m", "not cuda", "test_some.py")  # what scripts/test.sh runs, minus the module skip
    assert "2 failed" not in r.stdout and "1 deselected" in r.stdout
    assert "1 failed, 1 passed, 1 deselected, 1 xfailed, 1 error" in r.stdout


def test_test_script_deselects_cuda_tests_and_lists_skips():
    lines = [l for l in (ROOT / "scripts" / "test.sh").read_text().splitlines() if l.startswith("python3 -m pytest")]
    assert lines == ['python3 -m pytest tests -q -ra -m "not cuda"']
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'export CI="${CI:-true}"' in ci and ci.rstrip().endswith("exec bash scripts/test.sh")


def _stub(path: Path, body: str):
    path.write_text("#!/bin/sh\n" + body + "\n"); path.chmod(0o755)


def _setup_sh(tmp_path: Path, uid: int) -> tuple[subprocess.CompletedProcess, str]:
    "Run scripts/setup.sh with stubs for python, id, sudo and apt-get, and no chromium on PATH."
    bin_ = tmp_path / "bin"; bin_.mkdir()
    calls = tmp_path / "calls"
    _stub(bin_ / "python", "exit 0")  # `import torch` works, `pip install` does nothing
    _stub(bin_ / "id", f"echo {uid}")
    _stub(bin_ / "sudo", f'echo "sudo $*" >> {calls}; exec "$@"')
    _stub(bin_ / "apt-get", f'echo "apt-get $* (DEBIAN_FRONTEND=$DEBIAN_FRONTEND)" >> {calls}')
    for tool in ("dirname", "env"):  # the only other programs setup.sh runs
        os.symlink(shutil.which(tool), bin_ / tool)
    env = {"PATH": str(bin_), "PYTHON": str(bin_ / "python"), "HOME": str(tmp_path)}
    r = subprocess.run(["/bin/bash", str(ROOT / "scripts" / "setup.sh")], env=env, capture_output=True, text=True, timeout=60)
    return r, calls.read_text() if calls.exists() else ""


def test_setup_installs_chromium_as_root(tmp_path):
    "As root $SUDO is empty: `DEBIAN_FRONTEND=... apt-get` after it used to run the assignment as a command."
    r, calls = _setup_sh(tmp_path, 0)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "could not install chromium" not in r.stdout, r.stdout + r.stderr
    assert calls.splitlines() == ["apt-get update -qq (DEBIAN_FRONTEND=)",
                                  "apt-get install -y -qq chromium (DEBIAN_FRONTEND=noninteractive)"]


def test_setup_installs_chromium_through_sudo(tmp_path):
    r, calls = _setup_sh(tmp_path, 1000)
    assert r.returncode == 0 and "could not install chromium" not in r.stdout, r.stdout + r.stderr
    assert "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium" in calls
    assert "apt-get install -y -qq chromium (DEBIAN_FRONTEND=noninteractive)" in calls
