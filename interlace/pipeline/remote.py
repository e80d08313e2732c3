"""The pipeline's weight-holding stages as functions of plain data, run on a worker.

`on_worker(fn, placement, ...)` runs `fn` as a Ray task with the placement's accelerator (one GPU
when the spec asks for GPUs) whenever Ray is up, else in this process; so the driver of a RayJob (on
the small head) never loads model weights: it learns the model's shape from its config on PyTorch's
meta device (`model_facts`), and each stage below loads what it needs where it runs, reading and
writing the shared output directory (a PVC on a cluster, like the finetune checkpoints).

Progress inside a remote stage is not forwarded (the stage itself is reported by the driver).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from interlace.runtime.placement import TrainPlacement
from interlace.schema.spec import DataSpec, EvaluationSpec, LayerPlan, ModelSpec, Results

T = TypeVar("T")


def ray_is_up() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def worker_device(placement: TrainPlacement) -> str:
    return "cuda" if placement.use_gpu else "cpu"


def on_worker(fn: Callable[..., T], placement: TrainPlacement, /, **kwargs: Any) -> T:
    """fn(**kwargs, device=...) on a Ray worker with one of the placement's accelerators, or here
    (on this process's GPU if the placement has GPUs and it has one) when Ray is not up."""
    if ray_is_up():
        import ray

        task = ray.remote(num_cpus=1, num_gpus=1 if placement.use_gpu else 0, max_retries=1)(fn)
        return ray.get(task.remote(**kwargs, device=worker_device(placement)))
    from interlace.runtime.placement import cuda_devices

    return fn(**kwargs, device="cuda" if placement.use_gpu and cuda_devices() > 0 else "cpu")


@dataclass(frozen=True)
class ModelFacts:
    """What the driver needs to know about the model, read from its config without weights."""

    num_layers: int
    deepstack_layers: list[int]
    total_params: int
    layer_params: list[int]  # parameters of each decoder layer, by original index


def model_facts(model: ModelSpec) -> ModelFacts:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from interlace.models.load import VLM_FAMILIES, find_parts, load_config

    cfg = load_config(model.source, revision=model.revision, trust_remote_code=model.trust_remote_code)
    cls = AutoModelForImageTextToText if cfg.model_type in VLM_FAMILIES else AutoModelForCausalLM
    with torch.device("meta"):
        m = cls.from_config(cfg, trust_remote_code=model.trust_remote_code)
    parts = find_parts(m)
    return ModelFacts(
        num_layers=len(parts.layers),
        deepstack_layers=list(parts.deepstack_layers),
        total_params=sum(p.numel() for p in m.parameters()),
        layer_params=[sum(p.numel() for p in layer.parameters()) for layer in parts.layers],
    )


def _load(model: ModelSpec | str, device: str, like: ModelSpec) -> Any:
    """The unpruned model (a ModelSpec), or a pruned/finetuned copy of it in a directory, loaded as
    `like` (spec.model) says: dtype, attention kernel and trust_remote_code (a copy of a model with
    remote code needs that code as much as the original; only the hub revision is the source's own)."""
    from interlace.models.load import load_model

    if isinstance(model, ModelSpec):
        return load_model(
            model.source,
            dtype=model.dtype,
            device=device,
            attn_implementation=model.attn_implementation,
            revision=model.revision,
            trust_remote_code=model.trust_remote_code,
        )
    return load_model(
        model,
        dtype=like.dtype,
        device=device,
        attn_implementation=like.attn_implementation,
        trust_remote_code=like.trust_remote_code,
    )


def prune_to_dir(*, model: ModelSpec, plan: LayerPlan, deepstack_policy: str, out_dir: str, device: str) -> None:
    """Load the base model, remove plan.drop (interlace.stages.prune), save it to out_dir."""
    from interlace.stages.prune import prune_model, save_model

    base = _load(model, device, model)
    pruned = prune_model(base.model, plan, deepstack_policy=deepstack_policy)
    save_model(pruned, base.processor, out_dir, plan=plan, overwrite=True)


def perplexities(
    *,
    model: ModelSpec,
    pruned_dir: str,
    evaluation: EvaluationSpec,
    finetune_data: DataSpec,
    max_length: int,
    device: str,
) -> list[tuple[str, str | None, float, float]]:
    """Held-out perplexity of the base and the pruned model (before finetuning), same samples:
    (benchmark name, domain, base, pruned) per perplexity set (out of domain, in domain)."""
    from interlace.stages.evaluate import perplexity, perplexity_sets

    base = _load(model, device, model)
    pruned = _load(pruned_dir, device, model)
    kw = {"batch_size": evaluation.batch_size, "max_length": max_length}
    return [
        (
            label,
            domain,
            perplexity(base.model, base.processor, samples, **kw),
            perplexity(pruned.model, base.processor, samples, **kw),
        )
        # as evaluate() picks them
        for label, domain, samples in perplexity_sets(evaluation, finetune_data=finetune_data)
    ]


def evaluate_models(
    *,
    model: ModelSpec,
    final_dir: str,
    evaluation: EvaluationSpec,
    finetune_data: DataSpec,
    max_length: int,
    device: str,
) -> Results:
    """Base vs the pruned (+finetuned) model in final_dir on evaluation.benchmarks, plus the speed report."""
    from interlace.stages.evaluate import evaluate

    base = _load(model, device, model)
    final = _load(final_dir, device, model)
    return evaluate(
        evaluation,
        base=base.model,
        pruned=final.model,
        processor=base.processor,
        finetune_data=finetune_data,
        max_length=max_length,
    )
