"""The library reads in lesson order: no module imports a module that a later notebook exports (imports inside
functions included), so a learner at lesson N never runs code from lesson N+1."""
import ast, re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "nanogpt_course"


def _lesson(mod: Path) -> str | None:
    "The notebook a module is exported from ('04b_pretrain'), from nbdev's header."
    m = re.search(r"File to edit: \.\./nbs/(\w+)\.ipynb", mod.read_text())
    return m.group(1) if m else None


def _imports(mod: Path) -> set[str]:
    "Every nanogpt_course module `mod` imports, at top level or inside a function."
    names = set()
    for node in ast.walk(ast.parse(mod.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module: names.add(node.module.split(".")[0])
            elif node.level == 1: names |= {a.name for a in node.names}
            elif node.module and node.module.startswith("nanogpt_course"):
                parts = node.module.split(".")
                if len(parts) > 1: names.add(parts[1])
                else: names |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("nanogpt_course.")}
    return {n for n in names if (PKG / f"{n}.py").exists()}


def test_no_module_imports_a_later_lesson():
    order = {p.stem: _lesson(p) for p in PKG.glob("*.py") if _lesson(p)}
    assert len(order) >= 10, order
    later = [f"{m} ({order[m]}) imports {d} ({order[d]})"
             for m in order for d in _imports(PKG / f"{m}.py") if d in order and order[d] > order[m]]
    assert not later, "a lesson imports a later one:\n" + "\n".join(later)


def exported_cell_sizes() -> list[tuple[int, str, int]]:
    "(lines, notebook, cell index) of every exported cell, its `#| export` line included."
    import json
    out = []
    for nb in sorted((PKG.parent / "nbs").glob("*.ipynb")):
        for i, c in enumerate(json.loads(nb.read_text())["cells"]):
            src = "".join(c["source"])
            if c["cell_type"] == "code" and re.match(r"#\|\s*export\b", src):
                out.append((len(src.rstrip("\n").split("\n")), nb.name, i))
    return out


def test_library_lines_fit_in_120_characters():
    "Every line a cell writes into the library fits in 120 characters (nbdev's module docstring and __all__ aside)."
    long = [f"{m.name}:{i}" for m in sorted(PKG.glob("*.py")) if m.name != "_modidx.py"
            for i, line in enumerate(m.read_text().splitlines(), 1) if len(line) > 120 and i > 1 and not line.startswith("__all__")]
    assert not long, f"library lines over 120 characters (wrap them in their notebook cell): {long}"


def test_lessons_come_in_small_steps(capsys):
    "Exported cells (course22p2's habit): none over 60 lines, and a mean of at most 25. `.ci/run` prints both."
    sizes = exported_cell_sizes()
    mean, big = sum(s for s, _, _ in sizes) / len(sizes), sorted(x for x in sizes if x[0] > 60)
    with capsys.disabled():
        print(f"\nexported cells: {len(sizes)}, mean {mean:.1f} lines, largest {max(sizes)[0]} ({max(sizes)[1]}), over 60: {len(big)}")
    assert not big, f"exported cells over 60 lines: {big}"
    assert mean <= 25, f"exported cells average {mean:.1f} lines; split the largest"


def test_benchmarks_use_only_names_the_library_has():
    "Benchmarks are not run by CI, so a renamed function would break them silently: every `nanogpt_course` name they use exists."
    import importlib
    missing = []
    for f in sorted((PKG.parent / "benchmarks").glob("*.py")):
        tree, mods = ast.parse(f.read_text()), {}
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("nanogpt_course"):
                m = importlib.import_module(n.module)
                for a in n.names:
                    if not hasattr(m, a.name) and not (PKG / f"{a.name}.py").exists(): missing.append(f"{f.name}: {n.module}.{a.name}")
                    elif (PKG / f"{a.name}.py").exists() and n.module == "nanogpt_course": mods[a.asname or a.name] = importlib.import_module(f"nanogpt_course.{a.name}")
        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in mods and not hasattr(mods[n.value.id], n.attr):
                missing.append(f"{f.name}:{n.lineno}: {n.value.id}.{n.attr}")
    assert not missing, "benchmarks use names the library no longer has:\n" + "\n".join(missing)
