"""Notebook 03c (`nanogpt_course.runtime`): device, precision and processes, decided in one place."""
import os

import pytest
import torch
import torch.distributed as dist

from nanogpt_course.runtime import autocast_for, check_device, pick_device, setup_distributed, teardown_distributed, unwrap, use_bf16


def test_device_choice_and_refusals():
    assert pick_device("cpu") == torch.device("cpu") and check_device("auto") == "auto"
    with pytest.raises(ValueError, match="--device must be auto, cpu"): pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU.*use --device cpu or auto"): pick_device("cuda")


def test_precision_policy():
    assert not use_bf16("cpu") and use_bf16("cpu", "bfloat16") and use_bf16("cuda", "auto") and not use_bf16("cuda", "float32")
    lin = torch.nn.Linear(3, 3)
    with autocast_for("cpu", "bfloat16"): assert lin(torch.ones(1, 3)).dtype == torch.bfloat16
    with autocast_for("cpu"): assert lin(torch.ones(1, 3)).dtype == torch.float32
    with pytest.raises(ValueError, match="--dtype must be auto, float32 or bfloat16, got 'half'"): autocast_for("cpu", "half")


def test_unwrap_finds_the_model_inside_ddp_and_compile(monkeypatch, tmp_path):
    from torch.nn.parallel import DistributedDataParallel as DDP
    lin = torch.nn.Linear(3, 3)
    for k, v in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(k, v)
    from helpers import free_port
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    threads = torch.get_num_threads()
    try:
        assert setup_distributed("cpu") == (0, 0, 1, torch.device("cpu")) and dist.get_backend() == "gloo"
        wrapped = DDP(torch.compile(lin))
        assert unwrap(wrapped) is lin and unwrap(torch.compile(DDP(lin))) is lin and unwrap(lin) is lin
    finally:
        teardown_distributed(); torch.set_num_threads(threads)
    assert not dist.is_initialized()
    teardown_distributed()  # a second call, outside any group, is harmless


@pytest.mark.parametrize("cmd", ["serve", "chat"])
def test_serve_and_chat_refuse_a_device_this_machine_lacks_before_loading(cmd, capsys, tmp_path):
    from nanogpt_course.cli import main
    with pytest.raises(SystemExit) as e:
        main([cmd, "--checkpoint", str(tmp_path / "missing.pt"), "--device", "cuda:7"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--device cuda:7" in err and "could not load" not in err
