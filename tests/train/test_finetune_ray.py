"""Interleaved finetuning on a real 2-worker Ray Train run (CPU, gloo, DDP).

One test, two fits, to keep Ray's start-up cost (tens of seconds per worker group on 2 cores) low:

1. a run with maxFailures 0 whose last worker dies after step 3 fails; it left a checkpoint at step 2;
2. the same call again (a restart of the whole job, same output directory) resumes from step 2; its
   last worker dies again after step 5, Ray Train restarts the worker group (maxFailures 1), which
   resumes from the step-4 checkpoint and finishes all 8 steps.

The finished model is then checked against the pruned model it started from: every frozen tensor is
bit-identical, the finetune layers changed, and the loss on the repeated pattern fell.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from interlace.runtime.placement import placement_of
from interlace.runtime.progress import JsonlReporter
from interlace.schema.spec import FinetuneSpec
from interlace.stages.finetune.driver import FAULT_MARKER_ENV, FAULT_STEP_ENV, finetune
from tests.train.conftest import pattern_samples, pattern_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _spec(max_failures: int) -> FinetuneSpec:
    return pattern_spec(max_steps=8, max_failures=max_failures)


def test_two_workers_train_only_finetune_layers_and_resume(
    ray_session, pruned_llama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir, plan = pruned_llama
    out = tmp_path / "run"
    samples = pattern_samples()

    # 1. The job dies after step 3 and may not retry: it fails, with a checkpoint at step 2.
    monkeypatch.setenv(FAULT_STEP_ENV, "3")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "crash-1"))
    with pytest.raises(Exception):  # noqa: B017 - Ray Train's TrainingFailedError family
        finetune(model_dir, plan, _spec(0), output_dir=out, placement=placement_of(2, 0), samples=samples)
    assert (tmp_path / "crash-1").exists()
    steps = sorted(p.name for p in (out / "checkpoints").glob("finetune-*/step-*"))
    assert steps == ["step-00000002"]

    # 2. The whole job restarts: it resumes from step 2; a worker dies after step 5 and Ray Train
    #    restarts the group from the step-4 checkpoint.
    monkeypatch.setenv(FAULT_STEP_ENV, "5")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "crash-2"))
    reporter = JsonlReporter(out / "progress.jsonl")
    result = finetune(model_dir, plan, _spec(1), output_dir=out, reporter=reporter, placement=placement_of(2, 0), samples=samples)
    reporter.close()
    assert (tmp_path / "crash-2").exists()
    assert result.attempt_starts == [0, 2, 4]
    assert result.start_step == 4 > 0
    assert result.steps == result.total_steps == 8
    assert len(result.losses) == 8
    assert result.effective_batch_size == 2 * 2 * 2
    assert result.trainable_positions == [1, 3]

    # The loss on the learnable pattern falls (first step: warmup, lr 0).
    assert result.losses[-1] < result.losses[0] - 1.0, result.losses

    # Frozen tensors bit-identical to the pruned model; finetune layers (positions 1, 3) changed.
    before = load_file(str(model_dir / "model.safetensors"))
    after = load_file(str(result.model_dir / "model.safetensors"))
    assert before.keys() == after.keys()
    trainable = [k for k in before if ".layers.1." in k or ".layers.3." in k]
    assert trainable
    for k in before:
        if k in trainable:
            assert not torch.equal(before[k], after[k]), f"{k} did not train"
        else:
            assert torch.equal(before[k], after[k]), f"frozen {k} changed"

    # The final checkpoint holds exactly the trainable tensors; progress went through the reporter.
    ckpt = load_file(str(result.checkpoint_dir / "trainable.safetensors"))
    assert set(ckpt) == set(trainable)
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    steps_seen = [e["data"]["step"] for e in events if e["event"] == "progress"]
    assert steps_seen[-1] == 8 and 3 in steps_seen
    last = events[-1]["data"]
    assert last["totalSteps"] == 8 and last["loss"] > 0 and last["learningRate"] >= 0
