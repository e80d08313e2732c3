"""Interleaved finetuning on Ray Train: only the plan's finetune layers learn.

Read top to bottom:

1. `finetune()` runs in the driver (the `interlace run` process, locally or on the Ray head). It
   works out the schedule, checks any checkpoints already in ``<output>/checkpoints``, starts a
   `ray.train.torch.TorchTrainer` and forwards the progress rank 0 sends back to the reporter.
2. `train_loop_per_worker()` runs in every Ray Train worker: load the pruned model, freeze all but
   the finetune layers (interlace.stages.finetune.freeze), wrap it in DDP or FSDP2, build AdamW +
   the schedule over the trainable parameters only, restore the newest checkpoint if there is one,
   then loop: accumulate micro-batches, clip, step, report, checkpoint.

Facts from the paper (method notes section 4): AdamW lr 1e-5, weight decay 0, cosine schedule with
3% warmup, grad-norm clip 1.0, bf16, gradient checkpointing, per-device batch 16 x accumulation 2,
one epoch, next-token cross-entropy on assistant tokens only.

Data: every worker reads the same deterministic sample stream (interlace.data.load_samples, or the
samples the caller passes) and keeps its share: global micro-batch m is samples
[m*B*W, (m+1)*B*W) of the stream (B = per-device batch, W = workers) and rank r takes the r-th slice
of B. The stream repeats for more than one epoch. Every rank therefore runs exactly the same number
of forward/backward passes (no DDP hang at the end of the data), and the data position in a
checkpoint is one number: samples consumed.

Loss: summed token cross-entropy divided by the number of assistant tokens in the whole optimizer
step across all workers (one all-reduce of a scalar per step), times W because DDP/FSDP average
gradients over workers. That is the exact token mean over the effective batch, however the
assistant tokens fall across micro-batches.

Checkpoints (every spec.checkpointEverySteps optimizer steps and at the end) go through
`ray.train.report(checkpoint=...)` into ``<output>/checkpoints/finetune-<time>/step-<N>/``: the
trainable parameters (safetensors), optimizer and scheduler state, and `state.json` (written last:
step, samples consumed, tokens, losses, plan fingerprint). Ray Train restarts the worker group after a
worker failure (FailureConfig.max_failures) and `ray.train.get_checkpoint()` hands the newest
checkpoint of the run to the new workers. A restart of the whole job (same output directory) starts a
new run whose workers load the newest complete checkpoint on disk (found by its state.json) when
the run has none of its own yet. We do not rely on Ray Train's run snapshot for that: a job killed
right after a report can leave a checkpoint directory that the snapshot does not list yet.

Fault injection for tests: INTERLACE_FAULT_CRASH_AT_STEP=N with INTERLACE_FAULT_MARKER=<file> in
the driver's environment makes the last worker `os._exit(1)` right after optimizer step N, once (the
marker file records that it happened).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from pydantic import BaseModel, ConfigDict, SkipValidation

from interlace.data.sample import Sample
from interlace.errors import InterlaceError
from interlace.runtime.placement import TrainPlacement, placement_of
from interlace.runtime.progress import NullReporter, Reporter, now_rfc3339
from interlace.runtime.ray_cluster import start_ray
from interlace.schema.spec import DistillationSpec, FinetuneSpec, LayerPlan, Metric, ModelSpec, Progress

if TYPE_CHECKING:
    import torch
    from torch import nn

RUN_PREFIX = "finetune"  # <output>/checkpoints/finetune-<UTC time>/step-<N>: one directory per run
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
STATE_FILE = "state.json"
COMPLETE_FILE = "COMPLETE"  # written into the persisted checkpoint after ray.train.report returned
FAULT_STEP_ENV = "INTERLACE_FAULT_CRASH_AT_STEP"
FAULT_MARKER_ENV = "INTERLACE_FAULT_MARKER"


@dataclass
class FinetuneResult:
    """What a finetuning run did. `model_dir` is the whole finetuned model (HF checkpoint);
    `checkpoint_dir` the final Ray Train checkpoint (trainable weights, optimizer, state)."""

    steps: int  # optimizer steps completed (== total_steps when the run finished)
    total_steps: int
    start_step: int  # step the last attempt started from (> 0 after any resume)
    final_loss: float | None
    losses: list[float]  # mean loss per optimizer step, over all attempts
    tokens: int  # non-padding tokens seen, all workers
    trainable_params: int
    total_params: int
    trainable_positions: list[int]
    attempt_starts: list[int]  # the step each attempt (first run, worker restarts, job restarts) began at
    seconds: float
    checkpoint_dir: Path
    model_dir: Path
    num_workers: int
    effective_batch_size: int
    wrapping: str = ""  # how the workers held the model: "fsdp2" (sharded DTensors), "ddp" or "none"
    # spec.distillation only: each step's loss parts, loss = (1 - weight) x ce + weight x kl
    ce_losses: list[float] = field(default_factory=list)
    kl_losses: list[float] = field(default_factory=list)


class WorkerConfig(BaseModel):
    """What `finetune()` hands every Ray Train worker (the one entry of train_loop_config besides the
    progress queue): the spec's own models, the paths, and the facts the driver worked out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_dir: Path  # the pruned model (interlace.stages.prune.save_model)
    # The unpruned source: how to load (attention kernel, remote code) and the teacher; None: a local
    # pruned model, sdpa, no remote code, no distillation.
    model: ModelSpec | None = None
    plan: LayerPlan
    spec: FinetuneSpec
    freeze_lm_head: bool
    total_steps: int
    precision: Literal["fp32", "bf16", "fp16"]
    fingerprint: str  # see run_fingerprint: what a checkpoint must match to be resumed
    final_model_dir: Path
    resume_root: Path  # where a (re)starting worker group looks for the newest complete checkpoint
    run_dir: Path  # this run's checkpoints
    # Samples the caller already holds (small sets, tests); they are not validated again.
    samples: SkipValidation[list[Sample] | None] = None
    fault_step: int | None = None  # fault injection, see the module docstring
    fault_marker: Path | None = None


# ------------------------------------------------------------------------------------------ driver


def finetune(
    model_dir: str | Path,
    plan: LayerPlan,
    spec: FinetuneSpec,
    *,
    output_dir: str | Path,
    model: ModelSpec | None = None,
    placement: TrainPlacement | None = None,
    freeze_lm_head: bool = True,
    reporter: Reporter | None = None,
    samples: list[Sample] | None = None,
    num_samples: int | None = None,
    max_steps: int | None = None,
    final_model_dir: str | Path | None = None,
) -> FinetuneResult:
    """Finetune the pruned model in `model_dir` (made from `plan` by interlace.stages.prune) on Ray Train.

    `model` is the unpruned model's spec (spec.model): the workers load the pruned copy with its
    attention kernel and trust_remote_code, and, with spec.distillation, the model itself as the
    teacher (required then). None: a pruned model from a local directory, sdpa, no remote code.
    `placement` is the Ray Train worker group (interlace.runtime.placement.train_placement of
    spec.resources; default one CPU worker). `freeze_lm_head` is spec.pruning.freezeLmHead.
    Data comes from ``spec.data`` through interlace.data.load_samples, or from `samples` when the
    caller already holds them (they travel to the workers with the config, so keep them small).
    `num_samples` (samples in one epoch) sets the schedule length when max_steps is not given; by
    default it is counted by reading the data once. `max_steps` overrides spec.maxSteps.
    Rank 0 writes the whole finetuned model to `final_model_dir` (default <output>/finetuned).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    reporter = reporter or NullReporter()
    model_dir = Path(model_dir).resolve()
    output_dir = Path(output_dir).resolve()
    final_model_dir = Path(final_model_dir).resolve() if final_model_dir else output_dir / "finetuned"
    if not (model_dir / "config.json").is_file():
        raise InterlaceError(
            f"{model_dir}: no config.json; pass the directory interlace.stages.prune.save_model wrote"
        )
    if spec.distillation is not None and model is None:
        raise InterlaceError(
            "spec.finetune.distillation needs the unpruned model as the teacher; pass model=ModelSpec(...)"
        )
    placement = placement or placement_of(1, 0)
    num_workers = placement.num_workers  # one Ray Train process per GPU
    precision = _resolve_precision(str(spec.precision), placement.use_gpu)
    if precision == "fp16" and spec.parallelism == "fsdp":
        raise InterlaceError("spec.finetune.precision fp16 needs a sharded grad scaler under FSDP; use bf16")

    # The schedule: total optimizer steps and the samples one step consumes (all workers).
    per_step = spec.per_device_batch_size * spec.gradient_accumulation_steps * num_workers
    steps = max_steps or spec.max_steps
    if steps is None:
        n = num_samples if num_samples is not None else (len(samples) if samples is not None else None)
        if n is None:
            n = _count_samples(spec)
        steps = max(1, math.floor(spec.epochs * n / per_step))
        if n < per_step:
            raise InterlaceError(
                f"spec.finetune.data yields {n} samples, fewer than one optimizer step needs "
                f"({per_step} = perDeviceBatchSize x gradientAccumulationSteps x workers); "
                "add data or lower the batch size"
            )

    storage = output_dir / "checkpoints"
    storage.mkdir(parents=True, exist_ok=True)
    fingerprint = run_fingerprint(plan, spec.distillation)
    newest = newest_checkpoint(storage) if spec.resume else None
    if newest is not None:
        state = json.loads((newest / STATE_FILE).read_text())
        if state.get("plan_fingerprint") != fingerprint:
            raise InterlaceError(
                f"{newest} was written for a different layer plan or distillation setting; set "
                "spec.finetune.resume: false to start over or use another output directory"
            )
    run_name = f"{RUN_PREFIX}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"

    start_ray()
    from ray.util.queue import Queue

    queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
    config = WorkerConfig(
        model_dir=model_dir,
        model=model,
        plan=plan,
        spec=spec,
        freeze_lm_head=freeze_lm_head,
        total_steps=steps,
        precision=cast("Literal['fp32', 'bf16', 'fp16']", precision),
        fingerprint=fingerprint,
        final_model_dir=final_model_dir,
        resume_root=storage if spec.resume else storage / run_name,
        run_dir=storage / run_name,
        samples=samples,
        fault_step=int(os.environ[FAULT_STEP_ENV]) if os.environ.get(FAULT_STEP_ENV) else None,
        fault_marker=Path(os.environ[FAULT_MARKER_ENV]) if os.environ.get(FAULT_MARKER_ENV) else None,
    )
    scaling, torch_config = ray_train_configs(placement)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "queue": queue},
        torch_config=torch_config,
        scaling_config=scaling,
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )

    # Rank 0 puts Progress payloads on the queue; a thread forwards them while fit() blocks.
    stop = threading.Event()
    forwarder = threading.Thread(target=_forward_progress, args=(queue, reporter, stop), daemon=True)
    forwarder.start()
    started = time.monotonic()
    try:
        result = trainer.fit()
    finally:
        stop.set()
        forwarder.join(timeout=10)
        with contextlib.suppress(Exception):
            queue.shutdown()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("finetuning finished without a checkpoint; see the Ray Train log above")
    ckpt_dir = Path(result.checkpoint.path)
    state = json.loads((ckpt_dir / STATE_FILE).read_text())
    return FinetuneResult(
        steps=state["step"],
        total_steps=state["total_steps"],
        start_step=state["start_step"],
        final_loss=state["losses"][-1] if state["losses"] else None,
        losses=state["losses"],
        tokens=state["tokens"],
        trainable_params=state["trainable_params"],
        total_params=state["total_params"],
        trainable_positions=state["trainable_positions"],
        attempt_starts=state["attempt_starts"],
        seconds=time.monotonic() - started,
        checkpoint_dir=ckpt_dir,
        model_dir=final_model_dir,
        num_workers=num_workers,
        effective_batch_size=per_step,
        wrapping=state.get("wrapping", ""),
        ce_losses=state.get("ce_losses", []),
        kl_losses=state.get("kl_losses", []),
    )


def ray_train_configs(placement: TrainPlacement) -> tuple[Any, Any]:
    """(ScalingConfig, TorchConfig) of a placement: one process per GPU with GPU:1 and NCCL, else
    CPU processes with gloo."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig

    scaling = ScalingConfig(
        num_workers=placement.num_workers,
        use_gpu=placement.use_gpu,
        resources_per_worker=dict(placement.resources_per_worker),
    )
    return scaling, TorchConfig(backend=placement.backend)


def _forward_progress(queue: Any, reporter: Reporter, stop: threading.Event) -> None:
    from ray.util.queue import Empty

    def drain(block: bool) -> bool:
        try:
            item = queue.get(block=block, timeout=0.5 if block else None)
        except Empty:
            return False
        except Exception:  # the queue actor is gone (shutdown): nothing more will come
            return False
        reporter.progress(Progress.model_validate(item))
        return True

    while not stop.is_set():
        drain(block=True)
    while drain(block=False):
        pass


def _resolve_precision(precision: str, use_gpu: bool) -> str:
    if precision == "auto":
        return "bf16" if use_gpu else "fp32"
    return precision


def _count_samples(spec: FinetuneSpec) -> int:
    """Samples in one epoch of spec.data: read once (the schedule needs its length)."""
    from interlace.data import load_samples

    return sum(1 for _ in load_samples(spec.data))


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
    key = json.dumps({"plan": fp, "distillation": distillation.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


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


# ------------------------------------------------------------------------------------------ worker


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
    trainable_params: int = 0
    total_params: int = 0
    trainable_positions: list[int] = field(default_factory=list)
    world_size: int = 1
    attempt_starts: list[int] = field(default_factory=list)  # step each (checkpointed) attempt began at
    wrapping: str = ""  # what _wrap produced, read back from the model (see wrapping_of)
    # With spec.distillation: the parts of each step's loss (cross-entropy, T^2 KL); empty without.
    ce_losses: list[float] = field(default_factory=list)
    kl_losses: list[float] = field(default_factory=list)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The loop every Ray Train worker runs: loop_config is {"config": WorkerConfig, "queue": Queue}."""
    import ray.train
    import ray.train.torch
    import torch
    from transformers import get_scheduler

    from interlace.stages.finetune.freeze import apply_freezing, enable_checkpointing

    config: WorkerConfig = loop_config["config"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    spec, plan, total_steps = config.spec, config.plan, config.total_steps
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    torch.manual_seed(0)

    # 1. The pruned model, frozen except the finetune layers. On GPU the frozen weights stay in
    #    bf16; the trainable ones are fp32 master weights and autocast runs the math in bf16.
    load_dtype = "float32" if amp_dtype is None or device.type == "cpu" else "bfloat16"
    loaded = _load(config, str(config.model_dir), load_dtype, device)
    model, processor = loaded.model, loaded.processor
    summary = apply_freezing(model, plan, freeze_lm_head=config.freeze_lm_head)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if spec.gradient_checkpointing:
        enable_checkpointing(model, summary.lowest_position)
    model.train()
    model = _wrap(model, spec.parallelism, device, amp_dtype, world)
    #    The teacher (spec.distillation): the unpruned model, in the student's load dtype, frozen, in
    #    eval mode, a full replica on every worker, never wrapped by DDP/FSDP (it has no gradients).
    teacher = load_teacher(config, load_dtype, device) if spec.distillation is not None else None

    # 2. The optimizer holds the trainable parameters only.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    scheduler = get_scheduler(
        spec.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(spec.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    # 3. Resume from the newest checkpoint (worker restart or whole-job restart), if any.
    state = TrainState(
        total_steps=total_steps,
        plan_fingerprint=config.fingerprint,
        trainable_params=summary.trainable_params,
        total_params=summary.total_params,
        trainable_positions=summary.positions,
        world_size=world,
        wrapping=wrapping_of(model),
    )
    #    The disk is the authority: Ray Train's get_checkpoint() only knows reports its controller
    #    already processed (a worker can die just after reporting), and V2 has no way to start a new
    #    run from an old run's checkpoint. It remains the fallback for storage we cannot list.
    on_disk = newest_checkpoint(config.resume_root)
    checkpoint = ray.train.get_checkpoint()
    if on_disk is not None:
        state = _load_checkpoint(on_disk, model, optimizer, scheduler, state)
    elif checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = _load_checkpoint(Path(d), model, optimizer, scheduler, state)
    state.start_step = state.step
    state.total_steps = total_steps
    state.attempt_starts.append(state.step)

    # 4. This worker's micro-batches, starting at the checkpointed data position.
    B, accum = spec.per_device_batch_size, spec.gradient_accumulation_steps
    batches = _micro_batches(config, processor, rank, world, skip=state.samples_consumed)
    queue = loop_config["queue"] if rank == 0 else None
    t_start, steps_this_attempt, tokens_at_start = time.monotonic(), 0, state.tokens

    # 5. The loop: accumulate, all-reduce the label count, backward, clip, step, report.
    while state.step < total_steps:
        group = [next(batches) for _ in range(accum)]
        losses = accumulate_gradients(
            model,
            group,
            device=device,
            amp_dtype=amp_dtype,
            world=world,
            scaler=scaler,
            teacher=teacher,
            distillation=spec.distillation,
        )
        lr = apply_gradients(trainable, optimizer, scheduler, scaler, max_grad_norm=spec.max_grad_norm)

        state.step += 1
        state.samples_consumed += B * accum * world
        state.tokens += losses.tokens
        state.losses.append(losses.loss)
        if losses.kl is not None:
            state.ce_losses.append(losses.ce)
            state.kl_losses.append(losses.kl)
        steps_this_attempt += 1
        if queue is not None:
            _send_progress(queue, state, lr, t_start, steps_this_attempt, tokens_at_start)

        last = state.step == total_steps
        if last or state.step % spec.checkpoint_every_steps == 0:
            _save_and_report(model, optimizer, scheduler, state, rank, config.run_dir)
        _maybe_crash(config, state.step, rank, world)

    # 6. The whole finetuned model, for evaluation and publishing (also after a resume that found
    #    the run already finished).
    _save_final_model(model, processor, config.final_model_dir, rank, load_dtype)


def _load(config: WorkerConfig, source: str, dtype: str, device: torch.device) -> Any:
    """A model as the spec says to load it: its attention kernel and trust_remote_code, both for the
    pruned copy and for the teacher (the revision only for the unpruned source itself)."""
    from interlace.models.load import load_model

    m = config.model
    return load_model(
        source,
        dtype=dtype,
        device=str(device),
        attn_implementation=m.attn_implementation if m else "sdpa",
        trust_remote_code=m.trust_remote_code if m else False,
        revision=m.revision if m and source == m.source else None,
    )


def load_teacher(config: WorkerConfig, dtype: str, device: torch.device) -> nn.Module:
    """The unpruned model (config.model.source) as a frozen teacher: eval mode, no gradients."""
    if config.model is None:
        raise InterlaceError("spec.finetune.distillation needs the unpruned model (spec.model) as the teacher")
    teacher: nn.Module = _load(config, config.model.source, dtype, device).model
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


@dataclass(frozen=True)
class StepLosses:
    """One optimizer step's losses, token means over all workers: `loss` is what was minimised; with
    distillation `ce` and `kl` are its parts (loss = (1 - w) ce + w kl), else ce == loss, kl None."""

    loss: float
    ce: float
    kl: float | None
    labels: float  # assistant tokens in the step, all workers
    tokens: int  # real tokens in the step, all workers


def accumulate_gradients(
    model: nn.Module,
    group: list[tuple[dict[str, torch.Tensor], int]],
    *,
    device: torch.device,
    amp_dtype: Any,
    world: int,
    scaler: Any = None,
    teacher: nn.Module | None = None,
    distillation: DistillationSpec | None = None,
) -> StepLosses:
    """Forward + backward over one optimizer step's micro-batches (the accumulation group).

    Each micro-batch's summed token loss is scaled by world / (assistant tokens in the whole step,
    all workers), so after DDP/FSDP average the gradients over workers they are the gradient of the
    token-mean loss of the effective batch. With `teacher` and `distillation` the summed token loss
    is (1 - w) x cross-entropy + w x T^2 x KL(teacher || student) (see `token_losses`). Returns the
    step's losses and counts, summed over all workers.
    """
    import torch
    import torch.distributed as dist

    distill = distillation if teacher is not None else None
    counts = torch.tensor(
        [sum(int((b["labels"][:, 1:] != -100).sum()) for b, _ in group), sum(n for _, n in group)],
        dtype=torch.float64,
    )
    if world > 1:
        dist.all_reduce(counts)
    n_labels, n_tokens = max(counts[0].item(), 1.0), int(counts[1].item())
    sums = torch.zeros(3, dtype=torch.float64)  # loss, ce, kl (summed over tokens)
    for i, (batch, _) in enumerate(group):
        with _no_sync(model, i == len(group) - 1), _autocast(device, amp_dtype):
            ce, kl = token_losses(
                model,
                batch,
                device,
                teacher=teacher if distill else None,
                temperature=distill.temperature if distill else 1.0,
            )
        part = ce if kl is None or distill is None else (1 - distill.weight) * ce + distill.weight * kl
        loss = part * (world / n_labels)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        kl_part = kl.detach() if kl is not None else ce.new_zeros(())
        sums += torch.stack([part.detach(), ce.detach(), kl_part]).double().cpu()
    if world > 1:
        dist.all_reduce(sums)
    loss_mean, ce_mean, kl_mean = (sums / n_labels).tolist()
    return StepLosses(
        loss=loss_mean, ce=ce_mean, kl=kl_mean if distill else None, labels=n_labels, tokens=n_tokens
    )


def apply_gradients(
    trainable: list[torch.nn.Parameter], optimizer: Any, scheduler: Any, scaler: Any, *, max_grad_norm: float
) -> float:
    """Clip, step the optimizer and the schedule, clear gradients. Returns the lr this step used."""
    import torch

    lr = float(optimizer.param_groups[0]["lr"])  # the scheduler moves it after the step
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return lr


def _autocast(device: torch.device, amp_dtype: Any) -> contextlib.AbstractContextManager[Any]:
    import torch

    return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()


def _wrap(model: nn.Module, parallelism: str, device: torch.device, amp_dtype: Any, world: int) -> nn.Module:
    """DDP, or FSDP2 (`fully_shard` per decoder layer, then the root)."""
    import torch

    if parallelism == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        from interlace.models.load import find_parts

        parts = find_parts(model)
        mp = (
            MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)
            if amp_dtype
            else MixedPrecisionPolicy()
        )
        for layer in parts.layers:
            fully_shard(layer, mp_policy=mp)
        if parts.lm_head is not None and parts.lm_head.weight.requires_grad:
            fully_shard(parts.lm_head, mp_policy=mp)  # fp32 trainable head: its own group
        fully_shard(model, mp_policy=mp)
        return model
    if world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # find_unused_parameters stays False: every trainable parameter is used in every forward.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def wrapping_of(model: nn.Module) -> str:
    """How a wrapped model is distributed, read from the model itself rather than the spec."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        return "fsdp2"
    if hasattr(model, "no_sync"):
        return "ddp"
    return "none"


def _no_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation group."""
    if sync:
        return contextlib.nullcontext()
    no_sync = getattr(model, "no_sync", None)
    if no_sync is not None:  # DDP
        return no_sync()
    set_sync = getattr(model, "set_requires_gradient_sync", None)
    if set_sync is not None:  # FSDP2: toggled, restored on the last micro-batch
        set_sync(False)
        return _ReenableSync(model)
    return contextlib.nullcontext()


class _ReenableSync(contextlib.AbstractContextManager[Any]):
    def __init__(self, model: Any) -> None:
        self.model = model

    def __exit__(self, *exc: object) -> None:
        self.model.set_requires_gradient_sync(True)


def token_losses(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    *,
    teacher: nn.Module | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed next-token cross-entropy over assistant tokens (labels != -100) and, with a `teacher`,
    the summed T^2 x KL(teacher || student) of the temperature-T softened next-token distributions
    over the same tokens (None without a teacher).

    The logits are gathered at labelled positions before the softmax, so the float upcast of the
    vocabulary-sized logits covers only the tokens that count. The teacher runs without gradients.
    """
    import torch
    import torch.nn.functional as F

    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    labels = batch["labels"].to(device)
    logits = model(**inputs, use_cache=False).logits
    target = labels[:, 1:]
    mask = target != -100
    picked = logits[:, :-1][mask].float()
    ce = F.cross_entropy(picked, target[mask], reduction="sum")
    if teacher is None:
        return ce, None
    with torch.no_grad():
        t_logits = teacher(**inputs, use_cache=False).logits[:, :-1][mask].float()
    t = float(temperature)
    student_log_p = F.log_softmax(picked / t, dim=-1)
    teacher_log_p = F.log_softmax(t_logits / t, dim=-1)
    # KL(p_teacher || p_student) summed over the vocabulary and the tokens.
    kl = F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="sum")
    return ce, kl * (t * t)


def _micro_batches(
    config: WorkerConfig, processor: Any, rank: int, world: int, *, skip: int
) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
    """This rank's micro-batches: slice r of every global micro-batch of the repeating stream.

    Yields (batch, number of real tokens). A sample this model cannot encode (EncodeError: e.g. an
    image cut by maxLength) is skipped and logged. If a whole slice is unusable, the previous good
    example is sent again with every label masked: it adds nothing to the loss, but keeps this rank
    in step with the others (DDP needs every rank to run every backward pass).
    """
    import itertools
    import logging

    import torch

    from interlace.data.chat import tokenizer_of
    from interlace.data.encode import IGNORE_INDEX, EncodeError, collate, encode_sample

    log = logging.getLogger(__name__)
    spec = config.spec
    B = spec.per_device_batch_size
    tokenizer = tokenizer_of(processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stream = itertools.islice(_repeat_samples(config.samples, spec), skip, None)
    last_good: dict[str, Any] | None = None
    while True:
        chunk = list(itertools.islice(stream, B * world))
        examples = []
        for s in chunk[rank * B : (rank + 1) * B]:
            try:
                examples.append(encode_sample(s, processor, max_length=spec.max_length))
            except EncodeError as err:
                log.warning("finetune: skipped sample %s: %s", s.source, err)
        if examples:
            last_good = examples[-1]
        elif last_good is not None:
            examples = [{**last_good, "labels": torch.full_like(last_good["labels"], IGNORE_INDEX)}]
        else:
            raise InterlaceError("spec.finetune.data: the first samples cannot be encoded for this model")
        n_tokens = sum(int(ex["input_ids"].shape[0]) for ex in examples)
        yield collate(examples, pad_id, packing=spec.packing, max_length=spec.max_length), n_tokens


def _repeat_samples(samples: list[Sample] | None, spec: FinetuneSpec) -> Iterator[Sample]:
    while True:
        n = 0
        if samples is not None:
            source: Any = iter(samples)
        else:
            from interlace.data import load_samples

            source = load_samples(spec.data)
        for s in source:
            n += 1
            yield s
        if n == 0:
            raise InterlaceError(f"spec.finetune.data ({spec.data.path}) yields no samples")


def _send_progress(
    queue: Any, state: TrainState, lr: float, t_start: float, steps_here: int, tokens_at_start: int
) -> None:
    elapsed = time.monotonic() - t_start
    per_step = elapsed / max(steps_here, 1)
    progress = Progress(
        percent=round(100.0 * state.step / state.total_steps, 2),
        step=state.step,
        total_steps=state.total_steps,
        loss=state.losses[-1],
        learning_rate=lr,
        tokens_per_second=(state.tokens - tokens_at_start) / elapsed if elapsed > 0 else None,
        eta_seconds=per_step * (state.total_steps - state.step),
        message=f"finetune step {state.step}/{state.total_steps}",
        metrics=[
            Metric(name="samples", value=state.samples_consumed),
            *(
                [Metric(name="ce", value=state.ce_losses[-1]), Metric(name="kl", value=state.kl_losses[-1])]
                if state.kl_losses
                else []
            ),
        ],
        last_update_time=now_rfc3339(),
    )
    with contextlib.suppress(Exception):  # progress is best effort; a full queue never stalls training
        queue.put_nowait(progress.to_wire())


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
    if saved["plan_fingerprint"] != fresh.plan_fingerprint:
        raise InterlaceError(f"{d} was written for a different layer plan or distillation setting")
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


def _maybe_crash(config: WorkerConfig, step: int, rank: int, world: int) -> None:
    """Fault injection (see the module docstring): kill the last worker once after `fault_step`."""
    path = config.fault_marker
    if config.fault_step != step or rank != world - 1 or path is None:
        return
    if path.exists():
        return
    path.write_text(f"crashed rank {rank} after step {step}\n")
    os._exit(1)


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
