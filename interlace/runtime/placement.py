"""Where a PruneJob's stages run: decided by spec.resources, never by the driver's own hardware.

`spec.resources.gpusPerWorker > 0` means GPU stages: Ray Train starts one worker process per GPU
(workers x gpusPerWorker processes, each holding GPU:1, NCCL between them); 0 means CPU workers with
gloo. `check_accelerators` runs before any work and fails with a message naming spec.resources when
the Ray cluster (or, without Ray, this machine) has fewer GPUs than the spec asks for, instead of
silently training on CPU.

Before any GPU hour: `check_attention` accepts flash_attention_2 only with GPUs and flash-attn
importable in this image (head and workers run the same image), and `check_memory` refuses a
finetune whose estimated memory per GPU (interlace.runtime.costs, from the model config) exceeds
spec.resources.gpuMemory, with the numbers.

Analysis (interlace.stages.analyze.sharded), surgery and evaluation (interlace.pipeline.remote)
run as Ray tasks on the same placement; the driver (the RayJob's entrypoint on the Ray head) holds
no weights. Only without Ray (a local dry run) does the driver run the analysis itself, on its GPU
if it has one.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from interlace.errors import InterlaceError
from interlace.runtime.costs import GIB, DecoderShape, MemoryEstimate, memory_estimate, parse_quantity
from interlace.schema.spec import PruneJobSpec, ResourcesSpec
from interlace.settings import settings

# How long a driver joined to a Ray cluster (RAY_ADDRESS) waits for worker nodes to bring their GPUs.
DEFAULT_GPU_WAIT_S = 120.0


@dataclass(frozen=True)
class TrainPlacement:
    """The Ray Train worker group a spec asks for."""

    use_gpu: bool
    num_workers: int  # Ray Train worker processes (the data-parallel world size)
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    backend: str = "gloo"

    @property
    def gpus(self) -> int:
        return self.num_workers if self.use_gpu else 0


def train_placement(resources: ResourcesSpec) -> TrainPlacement:
    """One Ray Train worker per GPU (workers x gpusPerWorker, GPU:1 each, NCCL), else one per pod (gloo)."""
    return placement_of(resources.workers, resources.gpus_per_worker)


def placement_of(workers: int, gpus_per_worker: int) -> TrainPlacement:
    if workers < 1:
        raise InterlaceError(f"spec.resources.workers={workers}: need at least 1 Ray Train worker")
    if gpus_per_worker > 0:
        return TrainPlacement(
            use_gpu=True,
            num_workers=workers * gpus_per_worker,
            resources_per_worker={"CPU": 1.0, "GPU": 1.0},
            backend="nccl",
        )
    return TrainPlacement(use_gpu=False, num_workers=workers, resources_per_worker={"CPU": 1.0}, backend="gloo")


def loader_cpus(resources: ResourcesSpec) -> float | None:
    """The CPUs of one Ray Train process for its data loader: spec.resources.cpu of a worker pod shared
    by its gpusPerWorker processes. None on CPU workers (gpusPerWorker 0): there the training math
    itself uses the cores, and the rows are read in the training process."""
    if resources.gpus_per_worker <= 0:
        return None
    return parse_cpu(resources.cpu) / resources.gpus_per_worker


def parse_cpu(value: str | int) -> float:
    """A Kubernetes CPU quantity ("16", 8, "500m", "1.5") in cores."""
    s = str(value).strip()
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def needed_gpus(resources: ResourcesSpec) -> int:
    return train_placement(resources).gpus


def _shortfall(resources: ResourcesSpec, have: float, where: str) -> str:
    need = needed_gpus(resources)
    return (
        f"spec.resources asks for {need} GPU(s) ({resources.workers} worker(s) x gpusPerWorker "
        f"{resources.gpus_per_worker}) but {where} has {have:g}; set spec.resources.gpusPerWorker: 0 "
        "to run on CPU, or run where the GPUs are"
    )


def check_accelerators(resources: ResourcesSpec, *, wait_s: float | None = None) -> None:
    """Fail (InterlaceError naming spec.resources) when the GPUs the spec asks for are not there.

    With Ray connected (or RAY_ADDRESS set, then this connects): the cluster's GPU total, waiting up
    to `wait_s` (default INTERLACE_GPU_WAIT_SECONDS or 120 s on a remote cluster, 0 locally) for
    worker nodes to join. Without Ray: this machine's CUDA devices.
    """
    need = needed_gpus(resources)
    if need == 0:
        return
    remote = bool(settings().ray_address)
    connected = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if connected or remote:
        import ray

        if not connected:
            from interlace.runtime.ray_cluster import start_ray

            start_ray()
        if wait_s is None:
            configured = settings().gpu_wait_seconds
            wait_s = configured if configured is not None else (DEFAULT_GPU_WAIT_S if remote else 0.0)
        deadline = time.monotonic() + wait_s
        while True:
            have = float(ray.cluster_resources().get("GPU", 0.0))
            if have >= need or time.monotonic() >= deadline:
                break
            time.sleep(2.0)
        if have < need:
            raise InterlaceError(_shortfall(resources, have, "the Ray cluster"))
        return
    have = float(cuda_devices())
    if have < need:
        raise InterlaceError(_shortfall(resources, have, "this machine (no Ray cluster)"))


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def driver_device(resources: ResourcesSpec) -> str:
    """Device of the stages the driver runs itself: its GPU when the spec puts GPUs to use and the
    driver has one (a local run, or headGpus > 0), else its CPU."""
    if needed_gpus(resources) == 0:
        return "cpu"
    return "cuda" if cuda_devices() > 0 else "cpu"


def describe(placement: TrainPlacement) -> str:
    if placement.use_gpu:
        return f"{placement.num_workers} GPU worker process(es), NCCL"
    return f"{placement.num_workers} CPU worker process(es), gloo"


# ------------------------------------------------------------------------- attention and memory


def check_attention(spec: PruneJobSpec) -> None:
    """flash_attention_2 only where it can run: GPUs, and flash-attn importable in this image (the
    RayJob's head and workers run the same image)."""
    if spec.model.attn_implementation != "flash_attention_2":
        return
    if needed_gpus(spec.resources) == 0:
        raise InterlaceError(
            "spec.model.attnImplementation: flash_attention_2 runs on GPUs only, and "
            "spec.resources.gpusPerWorker is 0; use sdpa"
        )
    if importlib.util.find_spec("flash_attn") is None:
        raise InterlaceError(
            "spec.model.attnImplementation: flash_attention_2 needs the flash-attn package, which is not "
            "installed where this job runs; use sdpa (PyTorch's own flash kernel on GPUs)"
        )


def count_params(config: Any) -> int:
    """Parameters of the model a config describes, counted on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from interlace.models.load import VLM_FAMILIES

    cls = AutoModelForImageTextToText if config.model_type in VLM_FAMILIES else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    return sum(p.numel() for p in model.parameters())


def finetune_memory(
    spec: PruneJobSpec, config: Any, *, positions: list[int] | None = None, total_params: int | None = None
) -> MemoryEstimate:
    """Estimated GPU bytes per Ray Train worker to finetune the pruned model (interlace.runtime.costs).

    `positions`: the plan's finetune layers in the pruned stack; None before the plan is known, then
    the worst case: as many trainable layers as dropped ones, the lowest at position 0.
    """
    shape = DecoderShape.from_config(config)
    n_drop = spec.pruning.layers_to_drop(shape.num_layers)
    kept = shape.num_layers - n_drop
    unpruned = total_params if total_params is not None else count_params(config)
    total = unpruned - n_drop * shape.layer_matmul_params
    ft = spec.finetune
    placement = train_placement(spec.resources)
    return memory_estimate(
        shape,
        total_params=total,
        num_layers=kept,
        trainable=positions if positions is not None else range(min(n_drop, kept)),
        tokens_per_micro_batch=ft.per_device_batch_size * ft.max_length,
        checkpointing=ft.gradient_checkpointing,
        weight_bytes=4 if str(ft.precision) == "fp32" else 2,
        world_size=placement.num_workers,
        sharded=ft.parallelism == "fsdp",
        teacher_params=unpruned if ft.distillation is not None else 0,
        teacher_precomputed=ft.distillation is not None and ft.distillation.top_k is not None,
    )


def check_memory(
    spec: PruneJobSpec, config: Any, *, positions: list[int] | None = None, total_params: int | None = None
) -> MemoryEstimate | None:
    """Refuse (InterlaceError with the numbers) a GPU finetune that cannot fit spec.resources.gpuMemory."""
    if needed_gpus(spec.resources) == 0 or not spec.finetune.enabled or spec.dry_run:
        return None
    est = finetune_memory(spec, config, positions=positions, total_params=total_params)
    cap = parse_quantity(spec.resources.gpu_memory)
    if est.total > cap:
        ft = spec.finetune
        which = "for the plan's finetune layers" if positions is not None else (
            "worst case before the plan: the lowest trainable layer at 0"
        )
        raise InterlaceError(
            f"finetuning needs about {est.describe()} per GPU ({which}; micro-batch "
            f"perDeviceBatchSize {ft.per_device_batch_size} x maxLength {ft.max_length} tokens) but "
            f"spec.resources.gpuMemory is {spec.resources.gpu_memory} ({cap / GIB:.1f} GiB); lower "
            "spec.finetune.perDeviceBatchSize (raise gradientAccumulationSteps to keep the effective "
            "batch) or maxLength, keep gradientCheckpointing on, or shard with parallelism: fsdp"
            + (
                "; the distillation teacher is a full copy per GPU: set spec.finetune.distillation.topK to "
                "run it once before training instead, or drop spec.finetune.distillation"
                if ft.distillation is not None and ft.distillation.top_k is None
                else ""
            )
        )
    return est
