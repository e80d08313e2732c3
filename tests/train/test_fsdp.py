"""FSDP2 (`parallelism: fsdp`) on a real 2-worker Ray Train run (CPU, gloo), checked against DDP.

The same interleaved plan, data and schedule are trained twice: once under FSDP2 (every decoder layer
and the root sharded with `fully_shard`) with a worker killed mid-run and Ray Train restarting the
group from the last checkpoint, once under DDP without interruption. Sharding changes where the
gradient lives, not its value, and a resume restores the data position, the optimizer's moments and
the schedule: the two finished models must agree to float32 rounding, frozen tensors bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from interlace.errors import InterlaceError
from interlace.runtime.placement import placement_of
from interlace.schema.spec import FinetuneSpec
from interlace.stages.finetune.driver import FAULT_MARKER_ENV, FAULT_STEP_ENV, finetune
from tests.train.conftest import pattern_samples, pattern_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]
TWO = placement_of(2, 0)  # two CPU workers (gloo)


def _spec(parallelism: str, max_failures: int = 0) -> FinetuneSpec:
    return pattern_spec(parallelism=parallelism, max_steps=6, max_failures=max_failures)


def test_fsdp2_matches_ddp_and_resumes_after_a_worker_dies(
    ray_session, pruned_llama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, plan = pruned_llama
    samples = pattern_samples()

    # FSDP2: the last worker dies after step 3; Ray Train restarts the group from step 2.
    monkeypatch.setenv(FAULT_STEP_ENV, "3")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "crash"))
    fsdp = finetune(
        model_dir, plan, _spec("fsdp", max_failures=1), output_dir=tmp_path / "fsdp", placement=TWO, samples=samples
    )
    assert (tmp_path / "crash").exists()
    assert fsdp.attempt_starts == [0, 2] and fsdp.steps == 6
    assert fsdp.wrapping == "fsdp2"  # the workers' parameters really were sharded DTensors
    monkeypatch.delenv(FAULT_STEP_ENV)
    monkeypatch.delenv(FAULT_MARKER_ENV)

    ddp = finetune(model_dir, plan, _spec("ddp"), output_dir=tmp_path / "ddp", placement=TWO, samples=samples)
    assert ddp.attempt_starts == [0] and ddp.wrapping == "ddp"

    # Same losses step by step (the first logged under FSDP before the crash, the rest after it).
    assert fsdp.losses == pytest.approx(ddp.losses, rel=1e-4, abs=1e-5)
    assert fsdp.losses[-1] < fsdp.losses[0] - 0.5, fsdp.losses

    before = load_file(str(model_dir / "model.safetensors"))
    after_fsdp = load_file(str(fsdp.model_dir / "model.safetensors"))
    after_ddp = load_file(str(ddp.model_dir / "model.safetensors"))
    assert before.keys() == after_fsdp.keys() == after_ddp.keys()
    trainable = {k for k in before if ".layers.1." in k or ".layers.3." in k}
    assert trainable
    for k in before:
        if k in trainable:
            assert not torch.equal(before[k], after_fsdp[k]), f"{k} did not train under FSDP2"
            torch.testing.assert_close(after_fsdp[k], after_ddp[k], rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(before[k], after_fsdp[k]), f"frozen {k} changed under FSDP2"

    # The FSDP2 checkpoint holds full (unsharded) trainable tensors, like DDP's.
    ckpt = load_file(str(fsdp.checkpoint_dir / "trainable.safetensors"))
    assert set(ckpt) == trainable
    assert all(ckpt[k].shape == before[k].shape for k in ckpt)


def test_fsdp_with_fp16_is_refused_naming_the_field(pruned_llama, tmp_path: Path) -> None:
    model_dir, plan = pruned_llama
    spec = FinetuneSpec(parallelism="fsdp", precision="fp16", max_steps=1)
    with pytest.raises(InterlaceError, match="precision fp16"):
        finetune(model_dir, plan, spec, output_dir=tmp_path, placement=placement_of(1, 1))
    assert not (tmp_path / "checkpoints").exists()
