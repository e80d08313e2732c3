"""Finetuning checkpoints: what a resume needs and where it is.

Every spec.checkpointEverySteps optimizer steps and at the end the workers gather the trainable
parameters and rank 0 writes them, the optimizer and scheduler state and `state.json` (written last:
step, samples consumed, tokens, losses, the run fingerprint) through `ray.train.report` into
``<output>/checkpoints/finetune-<time>/step-<N>/``, then marks it COMPLETE. A (re)starting worker group
loads the newest complete checkpoint on disk whose fingerprint (`run_fingerprint`: the plan's layers
and the distillation setting) matches, and whose data plan fingerprint (`data_fingerprint`:
interlace.data.dataplan.DataPlan.finetune_fingerprint, the rows and their order) is the run's: a
checkpoint's data position (samples consumed) names a row only under the plan it was trained with.
See interlace.stages.finetune.driver for the whole picture.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from interlace.errors import InterlaceError
from interlace.schema.spec import DistillationSpec, LayerPlan

if TYPE_CHECKING:
    import torch
    from torch import nn


RUN_PREFIX = "finetune"  # <output>/checkpoints/finetune-<UTC time>/step-<N>: one directory per run
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
STATE_FILE = "state.json"
COMPLETE_FILE = "COMPLETE"  # written into the persisted checkpoint after ray.train.report returned


@dataclass
class TrainState:
    """Everything besides tensors that a resume needs; saved as state.json in each checkpoint."""

    step: int = 0
    samples_consumed: int = 0  # position in the (repeating) global sample stream
    tokens: int = 0
    start_step: int = 0
    total_steps: int = 0
    losses: list[float] = field(default_factory=list)
    plan_fingerprint: str = ""
    # DataPlan.finetune_fingerprint of spec.finetune.data's plan; "" without a plan (samples passed
    # in, or a stream). Absent in checkpoints written before it existed.
    data_fingerprint: str = ""
    trainable_params: int = 0
    total_params: int = 0
    trainable_positions: list[int] = field(default_factory=list)
    world_size: int = 1
    attempt_starts: list[int] = field(default_factory=list)  # step each (checkpointed) attempt began at
    wrapping: str = ""  # what _wrap produced, read back from the model (see wrapping_of)
    # With spec.distillation: the parts of each step's loss (cross-entropy, T^2 KL); empty without.
    ce_losses: list[float] = field(default_factory=list)
    kl_losses: list[float] = field(default_factory=list)


def plan_fingerprint(plan: LayerPlan) -> str:
    """Identifies the layers a checkpoint was trained for: the same pruned model and trainables."""
    key = json.dumps({"n": plan.num_layers, "drop": plan.drop, "finetune": plan.finetune}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def run_fingerprint(plan: LayerPlan, distillation: DistillationSpec | None) -> str:
    """What a checkpoint must match to be resumed: the plan's layers and the distillation setting (a
    run without distillation keeps the plain plan fingerprint, as checkpoints before it had)."""
    fp = plan_fingerprint(plan)
    if distillation is None:
        return fp
    # exclude_none: a setting without topK keeps the fingerprint it had before topK existed.
    setting = distillation.model_dump(mode="json", exclude_none=True)
    key = json.dumps({"plan": fp, "distillation": setting}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def check_resumable(path: Path, saved: dict[str, Any], fingerprint: str, data_fingerprint: str) -> None:
    """Refuse to resume checkpoint `path` (its state.json `saved`) with another layer plan,
    distillation setting or data plan. A checkpoint without a data fingerprint (written before it was
    recorded) is resumed as before."""
    if saved.get("plan_fingerprint") != fingerprint:
        raise InterlaceError(
            f"{path} was written for a different layer plan or distillation setting; set "
            "spec.finetune.resume: false to start over or use another output directory"
        )
    old = saved.get("data_fingerprint")
    if old is not None and old != data_fingerprint:

        def what(fp: str) -> str:
            return f"data plan {fp}" if fp else "no data plan (a sample stream)"

        raise InterlaceError(
            f"{path} was trained on {what(old)}, this run has {what(data_fingerprint)}: "
            "spec.finetune.data changed (seed, sampling, fraction, subsets or maxSamples, or the source's "
            "rows), so its data position would name other rows; restore spec.finetune.data, or set "
            "spec.finetune.resume: false to start over, or use another output directory"
        )


def newest_checkpoint(root: Path) -> Path | None:
    """The complete checkpoint with the highest step under `root`: <output>/checkpoints (any run) or
    one run's directory. Complete = rank 0 wrote COMPLETE into it after Ray Train persisted it."""
    best: tuple[int, str, Path] | None = None
    marks = [*root.glob(f"{RUN_PREFIX}-*/step-*/{COMPLETE_FILE}"), *root.glob(f"step-*/{COMPLETE_FILE}")]
    for mark in marks:
        try:
            step = int(json.loads((mark.parent / STATE_FILE).read_text())["step"])
        except (ValueError, KeyError, OSError):
            continue  # a damaged checkpoint is skipped, not fatal
        key = (step, mark.parent.parent.name, mark.parent)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


def _save_and_report(
    model: nn.Module, optimizer: Any, scheduler: Any, state: TrainState, rank: int, run_dir: Path
) -> None:
    """Gather full trainable state (collective), rank 0 writes it, every rank reports."""
    import ray.train
    import torch
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    inner = _unwrap(model)
    # Model state dicts hold tensors only (torch types the values as any state-dict value).
    model_sd = cast("dict[str, torch.Tensor]", get_model_state_dict(inner, options=opts))
    optim_sd = get_optimizer_state_dict(inner, optimizer, options=opts)
    metrics: dict[str, Any] = {"step": state.step, "start_step": state.start_step, "loss": state.losses[-1]}
    if state.kl_losses:
        metrics |= {"ce": state.ce_losses[-1], "kl": state.kl_losses[-1]}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        save_file({k: v.contiguous() for k, v in model_sd.items()}, str(d / TRAINABLE_FILE))
        torch.save(optim_sd, d / OPTIMIZER_FILE)
        torch.save(scheduler.state_dict(), d / SCHEDULER_FILE)
        (d / STATE_FILE).write_text(json.dumps(asdict(state)))
        name = f"step-{state.step:08d}"
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
    # report() returns once the checkpoint is persisted: mark it complete for a later resume.
    if (run_dir / name).is_dir():
        (run_dir / name / COMPLETE_FILE).write_text(f"{state.step}\n")


def _load_checkpoint(
    d: Path, model: nn.Module, optimizer: Any, scheduler: Any, fresh: TrainState
) -> TrainState:
    import torch
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    saved = json.loads((d / STATE_FILE).read_text())
    check_resumable(d, saved, fresh.plan_fingerprint, fresh.data_fingerprint)
    opts = StateDictOptions(full_state_dict=True, strict=False)
    inner = _unwrap(model)
    # torch's stub wants dict[str, ValueType] (invariant), a dict of tensors is one.
    set_model_state_dict(inner, load_file(str(d / TRAINABLE_FILE)), options=opts)  # type: ignore[arg-type]
    set_optimizer_state_dict(
        inner, optimizer, torch.load(d / OPTIMIZER_FILE, weights_only=False), options=opts
    )
    scheduler.load_state_dict(torch.load(d / SCHEDULER_FILE, weights_only=False))
    fresh.step = saved["step"]
    fresh.samples_consumed = saved["samples_consumed"]
    fresh.tokens = saved["tokens"]
    fresh.losses = list(saved["losses"])
    fresh.attempt_starts = list(saved.get("attempt_starts", []))
    fresh.ce_losses = list(saved.get("ce_losses", []))
    fresh.kl_losses = list(saved.get("kl_losses", []))
    return fresh


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP wraps; FSDP2 shards in place


def _save_final_model(model: nn.Module, processor: Any, out_dir: Path, rank: int, load_dtype: str) -> None:
    """Gather the full model (a collective under FSDP2) and let rank 0 save it as an HF checkpoint.

    Trainable weights were fp32 master copies; they go back to the dtype the model was loaded in,
    so the saved model has one dtype as before.
    """
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    inner = _unwrap(model)
    full = cast(
        "dict[str, torch.Tensor]",
        get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True)),
    )
    if rank != 0:
        return
    dtype = getattr(torch, load_dtype)
    full = {k: v.to(dtype) if v.is_floating_point() else v for k, v in full.items()}
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    inner.save_pretrained(tmp, state_dict=full)  # type: ignore[operator]  # a PreTrainedModel; torch types attributes as Tensor | Module
    processor.save_pretrained(tmp)
    from interlace.artifacts import normal_modes

    normal_modes(tmp)  # transformers leaves model.safetensors 0600
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
