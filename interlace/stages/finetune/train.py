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
from typing import TYPE_CHECKING, Any, cast

from interlace.data.sample import Sample
from interlace.errors import InterlaceError
from interlace.runtime.placement import TrainPlacement, placement_of
from interlace.runtime.progress import NullReporter, Reporter, now_rfc3339
from interlace.runtime.ray_cluster import start_ray
from interlace.schema.spec import FinetuneSpec, LayerPlan, Metric, Progress
from interlace.settings import settings

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


# ------------------------------------------------------------------------------------------ driver


def finetune(
    model_dir: str | Path,
    plan: LayerPlan,
    spec: FinetuneSpec,
    *,
    output_dir: str | Path,
    reporter: Reporter | None = None,
    num_workers: int = 1,
    use_gpu: bool = False,
    gpus_per_worker: int = 1,
    freeze_lm_head: bool = True,
    samples: list[Sample] | None = None,
    num_samples: int | None = None,
    max_steps: int | None = None,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    final_model_dir: str | Path | None = None,
) -> FinetuneResult:
    """Finetune the pruned model in `model_dir` (made from `plan` by interlace.stages.prune) on Ray Train.

    Data comes from ``spec.data`` through interlace.data.load_samples, or from `samples` when the
    caller already holds them (they travel to the workers with the config, so keep them small).
    `num_samples` (samples in one epoch) sets the schedule length when max_steps is not given; by
    default it is counted by reading the data once. `max_steps` overrides spec.maxSteps.
    Rank 0 writes the whole finetuned model to `final_model_dir` (default <output>/finetuned).
    `num_workers` and `gpus_per_worker` are spec.resources.workers/gpusPerWorker: with use_gpu,
    Ray Train runs one process per GPU (num_workers x gpus_per_worker, NCCL), else num_workers CPU
    processes (gloo); see interlace.runtime.placement.
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
    placement = placement_of(num_workers, gpus_per_worker if use_gpu else 0)
    num_workers = placement.num_workers  # one Ray Train process per GPU
    precision = _resolve_precision(str(spec.precision), use_gpu)
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
    fingerprint = plan_fingerprint(plan)
    newest = newest_checkpoint(storage) if spec.resume else None
    if newest is not None:
        state = json.loads((newest / STATE_FILE).read_text())
        if state.get("plan_fingerprint") != fingerprint:
            raise InterlaceError(
                f"{newest} was written for a different layer plan; set spec.finetune.resume: false "
                "to start over or use another output directory"
            )
    run_name = f"{RUN_PREFIX}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"

    start_ray()
    from ray.util.queue import Queue

    queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
    config = {
        "model_dir": str(model_dir),
        "plan": plan.model_dump(mode="json"),
        "spec": spec.model_dump(mode="json"),
        "total_steps": steps,
        "freeze_lm_head": freeze_lm_head,
        "precision": precision,
        "samples": samples,
        "attn_implementation": attn_implementation,
        "trust_remote_code": trust_remote_code,
        "plan_fingerprint": fingerprint,
        "final_model_dir": str(final_model_dir),
        # Where a (re)starting worker group looks for the newest complete checkpoint on disk.
        "resume_root": str(storage if spec.resume else storage / run_name),
        "run_dir": str(storage / run_name),
        "queue": queue,
        "fault_step": settings().fault_crash_at_step,
        "fault_marker": settings().fault_marker,
    }
    scaling, torch_config = ray_train_configs(placement)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
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


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """The loop every Ray Train worker runs."""
    import ray.train
    import ray.train.torch
    import torch
    from transformers import get_scheduler

    from interlace.models.load import load_model
    from interlace.stages.finetune.freeze import apply_freezing, enable_checkpointing

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    spec = FinetuneSpec.model_validate(config["spec"])
    plan = LayerPlan.model_validate(config["plan"])
    total_steps: int = config["total_steps"]
    precision: str = config["precision"]
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    torch.manual_seed(0)

    # 1. The pruned model, frozen except the finetune layers. On GPU the frozen weights stay in
    #    bf16; the trainable ones are fp32 master weights and autocast runs the math in bf16.
    load_dtype = "float32" if amp_dtype is None or device.type == "cpu" else "bfloat16"
    loaded = load_model(
        config["model_dir"],
        dtype=load_dtype,
        device=str(device),
        attn_implementation=config["attn_implementation"],
        trust_remote_code=config["trust_remote_code"],
    )
    model, processor = loaded.model, loaded.processor
    summary = apply_freezing(model, plan, freeze_lm_head=config["freeze_lm_head"])
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if spec.gradient_checkpointing:
        enable_checkpointing(model, summary.lowest_position)
    model.train()
    model = _wrap(model, spec.parallelism, device, amp_dtype, world)

    # 2. The optimizer holds the trainable parameters only.
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.learning_rate, weight_decay=spec.weight_decay)
    scheduler = get_scheduler(
        spec.lr_scheduler,
        optimizer,
        num_warmup_steps=math.ceil(spec.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    # 3. Resume from the newest checkpoint (worker restart or whole-job restart), if any.
    state = TrainState(
        total_steps=total_steps,
        plan_fingerprint=config["plan_fingerprint"],
        trainable_params=summary.trainable_params,
        total_params=summary.total_params,
        trainable_positions=summary.positions,
        world_size=world,
        wrapping=wrapping_of(model),
    )
    #    The disk is the authority: Ray Train's get_checkpoint() only knows reports its controller
    #    already processed (a worker can die just after reporting), and V2 has no way to start a new
    #    run from an old run's checkpoint. It remains the fallback for storage we cannot list.
    on_disk = newest_checkpoint(Path(config["resume_root"]))
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
    batches = _micro_batches(config, spec, processor, rank, world, skip=state.samples_consumed)
    queue = config["queue"] if rank == 0 else None
    t_start, steps_this_attempt, tokens_at_start = time.monotonic(), 0, state.tokens

    # 5. The loop: accumulate, all-reduce the label count, backward, clip, step, report.
    while state.step < total_steps:
        group = [next(batches) for _ in range(accum)]
        mean_loss, _, n_tokens = accumulate_gradients(
            model, group, device=device, amp_dtype=amp_dtype, world=world, scaler=scaler
        )
        lr = apply_gradients(trainable, optimizer, scheduler, scaler, max_grad_norm=spec.max_grad_norm)

        state.step += 1
        state.samples_consumed += B * accum * world
        state.tokens += n_tokens
        state.losses.append(mean_loss)
        steps_this_attempt += 1
        if queue is not None:
            _send_progress(queue, state, lr, t_start, steps_this_attempt, tokens_at_start)

        last = state.step == total_steps
        if last or state.step % spec.checkpoint_every_steps == 0:
            _save_and_report(model, optimizer, scheduler, state, rank, Path(config["run_dir"]))
        _maybe_crash(config, state.step, rank, world)

    # 6. The whole finetuned model, for evaluation and publishing (also after a resume that found
    #    the run already finished).
    _save_final_model(model, processor, Path(config["final_model_dir"]), rank, load_dtype)


def accumulate_gradients(
    model: nn.Module,
    group: list[tuple[dict[str, torch.Tensor], int]],
    *,
    device: torch.device,
    amp_dtype: Any,
    world: int,
    scaler: Any = None,
) -> tuple[float, float, int]:
    """Forward + backward over one optimizer step's micro-batches (the accumulation group).

    Each micro-batch's summed token loss is scaled by world / (assistant tokens in the whole step,
    all workers), so after DDP/FSDP average the gradients over workers they are the gradient of the
    token-mean loss of the effective batch. Returns (mean loss over all workers, assistant tokens,
    real tokens), the counts summed over all workers.
    """
    import torch
    import torch.distributed as dist

    counts = torch.tensor(
        [sum(int((b["labels"][:, 1:] != -100).sum()) for b, _ in group), sum(n for _, n in group)],
        dtype=torch.float64,
    )
    if world > 1:
        dist.all_reduce(counts)
    n_labels, n_tokens = max(counts[0].item(), 1.0), int(counts[1].item())
    loss_sum = torch.zeros((), dtype=torch.float64)
    for i, (batch, _) in enumerate(group):
        with _no_sync(model, i == len(group) - 1), _autocast(device, amp_dtype):
            part = _token_loss_sum(model, batch, device)
        loss = part * (world / n_labels)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_sum += part.detach().double().cpu()
    if world > 1:
        dist.all_reduce(loss_sum)
    return loss_sum.item() / n_labels, n_labels, n_tokens


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


def _token_loss_sum(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Summed next-token cross-entropy over assistant tokens (labels != -100).

    The logits are gathered at labelled positions before the softmax, so the float upcast of the
    vocabulary-sized logits covers only the tokens that count.
    """
    import torch.nn.functional as F

    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    labels = batch["labels"].to(device)
    logits = model(**inputs, use_cache=False).logits
    target = labels[:, 1:]
    mask = target != -100
    picked = logits[:, :-1][mask].float()
    return F.cross_entropy(picked, target[mask], reduction="sum")


def _micro_batches(
    config: dict[str, Any], spec: FinetuneSpec, processor: Any, rank: int, world: int, *, skip: int
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
    B = spec.per_device_batch_size
    tokenizer = tokenizer_of(processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stream = itertools.islice(_repeat_samples(config, spec), skip, None)
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


def _repeat_samples(config: dict[str, Any], spec: FinetuneSpec) -> Iterator[Sample]:
    samples: list[Sample] | None = config.get("samples")
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
        metrics=[Metric(name="samples", value=state.samples_consumed)],
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
    metrics = {"step": state.step, "start_step": state.start_step, "loss": state.losses[-1]}
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
        raise InterlaceError(f"{d} was written for a different layer plan")
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
    return fresh


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP wraps; FSDP2 shards in place


def _maybe_crash(config: dict[str, Any], step: int, rank: int, world: int) -> None:
    """Fault injection (see the module docstring): kill the last worker once after `fault_step`."""
    marker = config.get("fault_marker")
    if config.get("fault_step") != step or rank != world - 1 or not marker:
        return
    path = Path(marker)
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
