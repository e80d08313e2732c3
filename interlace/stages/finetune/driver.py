"""Interleaved finetuning on Ray Train: only the plan's finetune layers learn.

Read top to bottom:

1. `finetune()` (this module) runs in the driver (the `interlace run` process, locally or on the Ray head). It
   works out the schedule, checks any checkpoints already in ``<output>/checkpoints``, starts a
   `ray.train.torch.TorchTrainer` and forwards the progress rank 0 sends back to the reporter.
2. `train_loop_per_worker()` (interlace.stages.finetune.loop) runs in every Ray Train worker: load the pruned model, freeze all but
   the finetune layers (interlace.stages.finetune.freeze), wrap it in DDP or FSDP2, build AdamW +
   the schedule over the trainable parameters only, restore the newest checkpoint if there is one,
   then loop: accumulate micro-batches, clip, step, report, checkpoint.

Facts from the paper (method notes section 4): AdamW lr 1e-5, weight decay 0, cosine schedule with
3% warmup, grad-norm clip 1.0, bf16, gradient checkpointing, per-device batch 16 x accumulation 2,
one epoch, next-token cross-entropy on assistant tokens only.

Data: the data plan (interlace.data.dataplan, made here once for local shards, builtin corpora and
hub sources of known size, FineVision included) orders the finetuning rows, shuffled across subsets
with a seed per epoch; global micro-batch m is positions [m*B*W, (m+1)*B*W) of that order (B =
per-device batch, W = workers) and rank r reads (by row index, interlace.data.reader: local files, or
the hub's parquet row groups) and decodes only the r-th slice of B. Samples the caller passes and a
hub subset of unknown size keep the older path: every worker walks the same deterministic sample
stream (interlace.data.load_samples, table order) and keeps the same slice. Both repeat for more
than one epoch. Every rank therefore runs exactly the same number
of forward/backward passes (no DDP hang at the end of the data), and the data position in a
checkpoint is one number: samples consumed.

Loss: summed token cross-entropy divided by the number of assistant tokens in the whole optimizer
step across all workers (one all-reduce of a scalar per step), times W because DDP/FSDP average
gradients over workers. That is the exact token mean over the effective batch, however the
assistant tokens fall across micro-batches.

Checkpoints (every spec.checkpointEverySteps optimizer steps and at the end) go through
`ray.train.report(checkpoint=...)` into ``<output>/checkpoints/finetune-<time>/step-<N>/``: the
trainable parameters (safetensors), optimizer and scheduler state, and `state.json` (written last:
step, samples consumed, tokens, losses, plan fingerprint, data plan fingerprint). Ray Train restarts the worker group after a
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
import json
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

from interlace.data.dataplan import DataPlan
from interlace.data.sample import Sample
from interlace.errors import InterlaceError
from interlace.runtime.placement import TrainPlacement, placement_of
from interlace.runtime.progress import NullReporter, Reporter
from interlace.runtime.ray_cluster import start_ray
from interlace.schema.spec import FinetuneSpec, LayerPlan, ModelSpec
from interlace.schema.status import Progress
from interlace.settings import settings
from interlace.stages.finetune.checkpoint import (
    RUN_PREFIX,
    STATE_FILE,
    check_resumable,
    newest_checkpoint,
    run_fingerprint,
)
from interlace.stages.finetune.loop import WorkerConfig, train_loop_per_worker

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
    data_plan: DataPlan | None = None,
    loader_cpus: float | None = None,
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
    `data_plan` (interlace.data.dataplan.build_plan of spec.data): the rows and their order; made here
    when spec.data can be read by index (local shards, builtin, sized hub subsets) and no `samples`
    are given. With a plan each worker
    reads only its own rows, by index, and the epoch is the plan's rows.
    `loader_cpus` (interlace.runtime.placement.loader_cpus of spec.resources): the CPUs of one
    training process; with a data plan, all but one of them read and encode the next micro-batches
    in DataLoader worker processes (interlace.stages.finetune.batches). None: read in the training
    process.
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

    if data_plan is None and samples is None:
        from interlace.data.reader import check_hub_files, plan_readable

        if plan_readable(spec.data):
            from interlace.data.dataplan import build_plan

            data_plan = build_plan(spec.data, where="spec.finetune.data")
            check_hub_files(spec.data, data_plan, where="spec.finetune.data")
    if data_plan is not None and num_samples is None and samples is None:
        num_samples = data_plan.num_finetune

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
    data_fingerprint = data_plan.finetune_fingerprint() if data_plan is not None and samples is None else ""
    if newest is not None:
        check_resumable(newest, json.loads((newest / STATE_FILE).read_text()), fingerprint, data_fingerprint)
    run_name = f"{RUN_PREFIX}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"

    start_ray()
    from ray.util.queue import Queue

    queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
    env = settings()
    config = WorkerConfig(
        model_dir=model_dir,
        model=model,
        plan=plan,
        spec=spec,
        freeze_lm_head=freeze_lm_head,
        total_steps=steps,
        precision=cast("Literal['fp32', 'bf16', 'fp16']", precision),
        fingerprint=fingerprint,
        data_fingerprint=data_fingerprint,
        final_model_dir=final_model_dir,
        resume_root=storage if spec.resume else storage / run_name,
        run_dir=storage / run_name,
        samples=samples,
        data_plan=data_plan if samples is None else None,
        loader_cpus=loader_cpus,
        fault_step=env.fault_crash_at_step,
        fault_marker=Path(env.fault_marker) if env.fault_marker else None,
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
