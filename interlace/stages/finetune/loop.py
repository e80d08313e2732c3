"""The loop every Ray Train worker runs (`train_loop_per_worker`) and the `WorkerConfig` it gets.

Load the pruned model (and, with spec.distillation, the unpruned teacher), freeze all but the finetune
layers, wrap, build AdamW and the schedule, resume from the newest checkpoint, (with distillation.topK:
run the teacher once over the micro-batches still to train, keep its top-k, free it), then loop over
this rank's share of the sample stream: accumulate, step, report progress, checkpoint. See
interlace.stages.finetune.driver for the whole picture.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import time
from collections import deque
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, SkipValidation

from interlace.data.dataplan import DataPlan
from interlace.data.sample import Sample
from interlace.errors import InterlaceError
from interlace.runtime.progress import now_rfc3339
from interlace.schema.spec import FinetuneSpec, LayerPlan, ModelSpec
from interlace.schema.status import Metric, Progress
from interlace.stages.finetune.checkpoint import (
    TrainState,
    _load_checkpoint,
    _save_and_report,
    _save_final_model,
    newest_checkpoint,
)
from interlace.stages.finetune.step import (
    TopKTargets,
    _autocast,
    _wrap,
    accumulate_gradients,
    apply_gradients,
    teacher_top_k,
    wrapping_of,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


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
    data_fingerprint: str = ""  # data_plan.finetune_fingerprint(): a resume must match it too
    final_model_dir: Path
    resume_root: Path  # where a (re)starting worker group looks for the newest complete checkpoint
    run_dir: Path  # this run's checkpoints
    # Samples the caller already holds (small sets, tests); they are not validated again.
    samples: SkipValidation[list[Sample] | None] = None
    # The data plan of spec.data (interlace.data.dataplan), made once by the driver: each rank reads
    # only its rows, by index. None: `samples`, or the sample stream of load_samples (only a hub
    # subset of unknown size has no plan).
    data_plan: SkipValidation[DataPlan | None] = None
    # CPUs of one training process (spec.resources.cpu / gpusPerWorker; None on CPU workers): all but
    # one read, decode and encode the data plan's rows in DataLoader workers (batches.loader_workers).
    loader_cpus: float | None = None
    fault_step: int | None = None  # fault injection, see the module docstring
    fault_marker: Path | None = None


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """The loop every Ray Train worker runs: loop_config is {"config": WorkerConfig, "queue": Queue}."""
    import ray.train
    import ray.train.torch
    import torch
    from transformers import get_scheduler

    from interlace.stages.finetune.freeze import prepare_student
    from interlace.stages.finetune.shard import load_sharded

    config: WorkerConfig = loop_config["config"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    spec, plan, total_steps = config.spec, config.plan, config.total_steps
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    torch.manual_seed(0)

    # 1. The pruned model, frozen except the finetune layers. On GPU the frozen weights stay in
    #    bf16; the trainable ones are fp32 master weights and autocast runs the math in bf16.
    #    Under FSDP2 the model is built on the meta device, prepared and sharded first, and only then
    #    are its weights loaded, each rank keeping its shards (interlace.stages.finetune.shard): no GPU
    #    ever holds the whole model. Under DDP every rank loads the whole model (it keeps a replica).
    load_dtype = "float32" if amp_dtype is None or device.type == "cpu" else "bfloat16"
    fsdp = spec.parallelism == "fsdp"
    loaded = _load(config, str(config.model_dir), load_dtype, device, empty=fsdp)
    model, processor = loaded.model, loaded.processor
    summary = prepare_student(
        model, plan, freeze_lm_head=config.freeze_lm_head, gradient_checkpointing=spec.gradient_checkpointing
    )
    model = _wrap(model, spec.parallelism, device, amp_dtype, world)
    if fsdp:
        trust = config.model.trust_remote_code if config.model else False
        load_sharded(model, config.model_dir, device, dtype=load_dtype, trust_remote_code=trust)
    #    The teacher (spec.distillation): the unpruned model, in the student's load dtype, frozen, in
    #    eval mode, a full replica on every worker, never wrapped by DDP/FSDP (it has no gradients).
    #    With distillation.topK it is loaded only for the precomputation (4b) and freed before training.
    distill = spec.distillation
    teacher = load_teacher(config, load_dtype, device) if distill is not None and distill.top_k is None else None

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
        data_fingerprint=config.data_fingerprint,
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
    pin = device.type == "cuda"  # page-locked batches: the step's copies to the GPU do not block
    batches = _micro_batches(config, processor, rank, world, skip=state.samples_consumed, pin_memory=pin)
    # 4b. distillation.topK: the teacher's top-k for exactly those micro-batches (the stream is
    #     deterministic: a second iterator from the same position yields the same batches), computed
    #     before the first step, so next to no activations or logits of the student; a restart
    #     recomputes from its own position.
    targets: deque[TopKTargets] | None = None
    micro = (total_steps - state.step) * accum
    if distill is not None and distill.top_k is not None and micro > 0:  # 0: a resume of a finished run
        source = _micro_batches(config, processor, rank, world, skip=state.samples_consumed, pin_memory=pin)
        targets = precompute_top_k(config, source, micro, load_dtype, device, amp_dtype, rank)
        source.close()  # its loader workers
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
            distillation=distill,
            targets=[targets.popleft() for _ in range(accum)] if targets is not None else None,
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
    batches.close()  # stops the loader workers (and their prefetch) before the final save

    # 6. The whole finetuned model, for evaluation and publishing (also after a resume that found
    #    the run already finished).
    _save_final_model(model, processor, config.final_model_dir, rank, load_dtype)


def _load(config: WorkerConfig, source: str, dtype: str, device: torch.device, *, empty: bool = False) -> Any:
    """A model as the spec says to load it: its attention kernel and trust_remote_code, both for the
    pruned copy and for the teacher (the revision only for the unpruned source itself). `empty`:
    built on the meta device, weights not read (see load_model)."""
    from interlace.models.load import load_model

    m = config.model
    return load_model(
        source,
        dtype=dtype,
        device=str(device),
        attn_implementation=m.attn_implementation if m else "sdpa",
        trust_remote_code=m.trust_remote_code if m else False,
        revision=m.revision if m and source == m.source else None,
        empty=empty,
    )


def precompute_top_k(
    config: WorkerConfig,
    batches: Iterator[tuple[dict[str, torch.Tensor], int]],
    micro_batches: int,
    dtype: str,
    device: torch.device,
    amp_dtype: Any,
    rank: int,
) -> deque[TopKTargets]:
    """spec.finetune.distillation.topK: load the teacher, run it over the next `micro_batches` of
    `batches` (this rank's, from the resume position), keep each trained token's top-k softened
    log-probabilities on the host, then free the teacher (and the GPU cache)."""
    import torch

    distill = config.spec.distillation
    assert distill is not None and distill.top_k is not None
    t0 = time.monotonic()
    teacher = load_teacher(config, dtype, device)
    out: deque[TopKTargets] = deque()
    for _ in range(micro_batches):
        batch, _tokens = next(batches)
        with _autocast(device, amp_dtype):
            out.append(teacher_top_k(teacher, batch, device, temperature=distill.temperature, k=distill.top_k))
    del teacher
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    logging.getLogger(__name__).info(
        "rank %d: teacher top-%d of %d micro-batches precomputed in %.1f s (%.1f MiB on the host); teacher freed",
        rank, distill.top_k, micro_batches, time.monotonic() - t0, sum(t.nbytes for t in out) / 2**20,
    )
    return out


def load_teacher(config: WorkerConfig, dtype: str, device: torch.device) -> nn.Module:
    """The unpruned model (config.model.source) as a frozen teacher: eval mode, no gradients."""
    if config.model is None:
        raise InterlaceError("spec.finetune.distillation needs the unpruned model (spec.model) as the teacher")
    teacher: nn.Module = _load(config, config.model.source, dtype, device).model
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _micro_batches(
    config: WorkerConfig, processor: Any, rank: int, world: int, *, skip: int, pin_memory: bool = False
) -> Generator[tuple[dict[str, torch.Tensor], int], None, None]:
    """This rank's micro-batches: slice r of every global micro-batch (see _rank_samples).

    Yields (batch, number of real tokens). A sample this model cannot encode (EncodeError: e.g. an
    image cut by maxLength) is skipped and logged. If a whole slice is unusable, the previous good
    example is sent again with every label masked: it adds nothing to the loss, but keeps this rank
    in step with the others (DDP needs every rank to run every backward pass).

    With a data plan the rows are read, decoded and encoded by `config.loader_workers` DataLoader
    worker processes ahead of the step (interlace.stages.finetune.batches; 0: in this process), in
    the same order. Without one (`samples`, an unsized hub stream) the stream is read here.
    `pin_memory`: batches in page-locked memory, for non_blocking copies to the GPU.
    """
    from interlace.models.load import load_config
    from interlace.models.packing import sample_positions
    from interlace.stages.finetune.batches import (
        FIRST_UNENCODABLE,
        Packing,
        collate_slice,
        encode_slice,
        loader_workers,
        masked,
        plan_micro_batches,
    )

    spec = config.spec
    # Packing: batches with images need the family's per-sample positions (None: they are padded,
    # logged once); flash-attention-2 keeps packed samples apart only in a single row (transformers'
    # varlen path needs batch size 1), so it packs the micro-batch into one row.
    m = config.model
    packing = None
    if spec.packing:
        model_config = load_config(str(config.model_dir), trust_remote_code=bool(m and m.trust_remote_code))
        one_row = m is not None and m.attn_implementation == "flash_attention_2"
        packing = Packing(sample_positions(model_config), None if one_row else spec.max_length)
    if config.samples is None and config.data_plan is not None:
        workers = loader_workers(config.loader_cpus)
        logging.getLogger(__name__).info(
            "rank %d: micro-batches from position %d, %d DataLoader worker(s)", rank, skip, workers
        )
        plan = config.data_plan
        yield from plan_micro_batches(
            spec, plan, processor, rank, world, skip=skip, num_workers=workers, pin_memory=pin_memory,
            packing=packing,
        )
        return
    last_good: dict[str, Any] | None = None
    for mine in _rank_samples(config, rank, world, skip=skip):
        examples = encode_slice(mine, processor, max_length=spec.max_length)
        if examples:
            last_good = examples[-1]
        elif last_good is not None:
            examples = [masked(last_good)]
        else:
            raise InterlaceError(FIRST_UNENCODABLE)
        batch, n_tokens = collate_slice(examples, processor, spec, packing)
        yield ({k: v.pin_memory() for k, v in batch.items()} if pin_memory else batch), n_tokens
    raise AssertionError("the sample stream repeats forever")


def _rank_samples(config: WorkerConfig, rank: int, world: int, *, skip: int) -> Iterator[list[Sample]]:
    """This rank's samples of each global micro-batch, the first one starting at position `skip`.

    With a data plan (local shards, builtin corpora, hub sources of known size: FineVision): the rank
    reads (and decodes) only its own slice of each global micro-batch of the plan's order, by row
    index; nothing before `skip` is read. Without (`samples`, a hub subset of unknown size): every
    rank walks the repeating stream from its start and keeps its slice."""
    import itertools

    B = config.spec.per_device_batch_size
    plan = config.data_plan
    if config.samples is None and plan is not None:
        from interlace.data.reader import RowReader

        reader = RowReader(config.spec.data, where="spec.finetune.data", plan=plan)
        position = skip
        while True:
            (rows,) = plan.rank_rows(rank, world, B, position, 1)
            position += B * world
            yield reader.samples(plan, rows)
    stream = itertools.islice(_repeat_samples(config.samples, config.spec), skip, None)
    while True:
        chunk = list(itertools.islice(stream, B * world))
        yield chunk[rank * B : (rank + 1) * B]


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


def _maybe_crash(config: WorkerConfig, step: int, rank: int, world: int) -> None:
    """Fault injection (see the module docstring): kill the last worker once after `fault_step`."""
    path = config.fault_marker
    if config.fault_step != step or rank != world - 1 or path is None:
        return
    if path.exists():
        return
    path.write_text(f"crashed rank {rank} after step {step}\n")
    os._exit(1)
