"""bench/rehearse.py at tiny size: the rehearsal of a multi-GPU step on CPU catches what it is for.

The rehearsal runs the library's own training step under fake tensors with a fake process group of N
ranks bound to CUDA only (see the bench's docstring). Here: such a group refuses a CPU collective as
NCCL does and takes a CUDA one; the shipped 8B example's step passes at tiny size at world 2 (DDP)
and 4 (FSDP2); and a CPU all-reduce planted in the step makes the rehearsal fail, naming it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = str(REPO / "manifests/examples/qwen3-vl-8b-25.yaml")


@pytest.fixture(scope="module")
def rehearse() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rehearse", REPO / "bench/rehearse.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rehearse"] = module
    spec.loader.exec_module(module)
    return module


def test_a_cuda_only_fake_group_refuses_a_cpu_collective_and_takes_a_fake_cuda_one() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.distributed.fake_pg import FakeStore

    assert not dist.is_initialized()
    dist.init_process_group("cuda:fake", store=FakeStore(), rank=0, world_size=8)
    try:
        with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
            dist.all_reduce(torch.zeros(2, dtype=torch.float64))
        with FakeTensorMode():
            dist.all_reduce(torch.zeros(2, dtype=torch.float64, device="cuda"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(("world", "parallelism"), [(2, "ddp"), (4, "fsdp")])
def test_the_tiny_rehearsal_of_the_8b_example_passes(
    rehearse: ModuleType, world: int, parallelism: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["-f", EXAMPLE, "--tiny", "--world", str(world), "--parallelism", parallelism, "--max-length", "96"]
    assert rehearse.main(argv) == 0
    out = capsys.readouterr().out
    assert f"world {world}, {parallelism}" in out
    assert "[1] collectives on a CUDA-only fake group (fake CUDA tensors, no backward): ok" in out
    assert "c10d.allreduce_': 2" in out  # the step's counts and sums, on the training device
    assert "estimate / simulated = " in out and "verdict: PASS" in out


def test_a_cpu_collective_in_the_step_fails_the_rehearsal(
    rehearse: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from interlace.stages.finetune import step

    real = step.accumulate_gradients

    def with_cpu_reduction(*args: Any, **kwargs: Any) -> Any:
        dist.all_reduce(torch.zeros(2))  # what the step did before its reductions moved to the device
        return real(*args, **kwargs)

    monkeypatch.setattr(step, "accumulate_gradients", with_cpu_reduction)
    assert rehearse.main(["-f", EXAMPLE, "--tiny", "--world", "2", "--max-length", "96"]) == 1
    out = capsys.readouterr().out
    assert "[1] collectives on a CUDA-only fake group (fake CUDA tensors, no backward): FAILED" in out
    assert "No backend type associated with device type cpu" in out
    assert "verdict: FAIL" in out
