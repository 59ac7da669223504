"""The README's code runs as written: its Python block, against a checkpoint at the path the block names."""
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(md: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", md, flags=re.S)


def test_using_the_library_block_runs(tmp_path, monkeypatch, capsys):
    "The block loads `runs/main/sft/sft.pt`: a small checkpoint of that kind is made there, then the block runs unchanged."
    from helpers import save_course_checkpoint
    from nanogpt_course.model import GPT, GPTConfig
    from nanogpt_course.tokenizer import BPETokenizer
    blocks = _python_blocks((ROOT / "README.md").read_text())
    block = next(b for b in blocks if "load_model(" in b)
    path = re.search(r'load_model\("([^"]+)"\)', block).group(1)
    tok = BPETokenizer.train("To be, or not to be, that is the question. " * 40, 300)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny", vocab_size=320))  # a padded vocabulary, as the gpt2 preset has
    monkeypatch.chdir(tmp_path)
    save_course_checkpoint(tmp_path / path, model, tok, kind="sft")
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("To be") and len(out) > len("To be\n")
