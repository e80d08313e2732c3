"""Which parameters of a pruned model train during interleaved finetuning, and which stay frozen.

INTERLACE (arXiv 2511.19676, section 4 of the method notes) trains only the surviving "finetune"
layer of each chosen triplet/pair. Everything else is frozen, stated per part of the model:

* vision tower, projector/merger: frozen (they carry no plan layers);
* input embeddings: frozen;
* decoder layers: only the plan's finetune layers, at their NEW positions after surgery
  (`interlace.stages.prune.kept_positions(plan)` maps original index -> position in the pruned stack);
* final norm: frozen;
* lm_head: frozen unless ``spec.pruning.freezeLmHead`` is false. The reference meant to freeze it but
  left it trainable for untied embeddings; we decide explicitly. With TIED embeddings a trainable
  head would also train the input embedding table, and every gradient would then run through the
  whole decoder down to the embeddings; so a trainable head is untied first (a copy of the weight).

Because the embeddings and every layer below the lowest trainable layer are frozen and their inputs
are plain tensors, autograd records nothing below that layer: the backward pass stops there. That is
where most of the method's speed and memory saving comes from. Gradient checkpointing is enabled,
non-reentrant (reentrant checkpointing needs inputs that require grad, which ours do not), on the
decoder layers that take part in the backward pass: the lowest trainable layer and everything above
it. Layers below it keep no activations for backward anyway, so checkpointing them would only cost.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from interlace.errors import InterlaceError

if TYPE_CHECKING:
    from torch import nn

    from interlace.schema.spec import LayerPlan  # only a type here: freezing works without pydantic


@dataclass(frozen=True)
class FreezeSummary:
    """What `apply_freezing` made trainable; logged by the trainer and checked by the tests."""

    positions: list[int]  # new decoder positions of the finetune layers, sorted
    trainable_names: list[str]  # parameter names (as in model.named_parameters()) that require grad
    trainable_params: int
    total_params: int
    lm_head_trainable: bool
    untied_lm_head: bool = False
    parts: dict[str, Any] = field(default_factory=dict, repr=False)  # part name -> frozen? (for logs)

    @property
    def lowest_position(self) -> int:
        return self.positions[0]


def finetune_positions(plan: LayerPlan) -> list[int]:
    """The plan's finetune layers at their positions in the pruned decoder stack."""
    from interlace.stages.prune import kept_positions

    kept = kept_positions(plan)
    missing = [i for i in plan.finetune if i not in kept]
    if missing:  # a LayerPlan validator makes this impossible; keep the message for hand-made plans
        raise InterlaceError(f"plan.finetune layers {missing} are not kept by the plan")
    return sorted(kept[i] for i in plan.finetune)


def _tied(a: nn.Module | None, b: nn.Module | None) -> bool:
    wa, wb = getattr(a, "weight", None), getattr(b, "weight", None)
    return wa is not None and wb is not None and wa is wb


def _untie_lm_head(model: nn.Module, lm_head: nn.Module) -> None:
    """Give lm_head its own copy of the (tied) embedding weight, and record that in the config so a
    saved checkpoint reloads with separate weights instead of re-tying them."""
    import torch

    weight = lm_head.weight
    assert isinstance(weight, torch.Tensor)
    lm_head.weight = torch.nn.Parameter(weight.detach().clone())
    for cfg in (getattr(model, "config", None), getattr(getattr(model, "config", None), "text_config", None)):
        if cfg is not None and hasattr(cfg, "tie_word_embeddings"):
            cfg.tie_word_embeddings = False


def apply_freezing(model: nn.Module, plan: LayerPlan, *, freeze_lm_head: bool = True) -> FreezeSummary:
    """Freeze everything, then unfreeze the plan's finetune layers (and lm_head if asked).

    `model` must already be pruned by `plan` (its decoder has num_layers - len(drop) layers);
    a model that does not match is an error rather than silently training the wrong layers.
    """
    from interlace.models.load import find_parts

    parts = find_parts(model)
    expected = plan.num_layers - len(plan.drop)
    if len(parts.layers) != expected:
        raise InterlaceError(
            f"the model has {len(parts.layers)} decoder layers but the plan keeps {expected} of "
            f"{plan.num_layers}: finetune the model that `interlace.stages.prune.prune_model` made "
            "from this plan"
        )
    positions = finetune_positions(plan)
    if not positions:
        raise InterlaceError("plan.finetune is empty: the plan has no layer to finetune")

    model.requires_grad_(False)
    for pos in positions:
        parts.layers[pos].requires_grad_(True)

    untied = False
    if not freeze_lm_head:
        if parts.lm_head is None:
            raise InterlaceError("spec.pruning.freezeLmHead is false but the model has no lm_head")
        if _tied(parts.lm_head, parts.embed_tokens):
            _untie_lm_head(model, parts.lm_head)
            untied = True
        parts.lm_head.requires_grad_(True)

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return FreezeSummary(
        positions=positions,
        trainable_names=names,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()),
        lm_head_trainable=not freeze_lm_head,
        untied_lm_head=untied,
        parts={
            "vision": parts.vision is not None,
            "projector": parts.projector is not None,
            "embed_tokens": True,
            "norm": True,
            "lm_head": freeze_lm_head,
        },
    )


def enable_checkpointing(model: nn.Module, lowest_position: int) -> list[int]:
    """Non-reentrant activation checkpointing on decoder layers `lowest_position` and up.

    We set the per-layer switch of transformers' `GradientCheckpointingLayer` directly instead of
    calling `model.gradient_checkpointing_enable()`: that method also calls
    `enable_input_require_grads()`, which makes the embedding output require grad and so would pull
    the backward pass all the way down through the frozen layers. Returns the positions enabled.
    """
    from torch.utils.checkpoint import checkpoint

    from interlace.models.load import find_parts

    layers = find_parts(model).layers
    fn = functools.partial(checkpoint, use_reentrant=False)
    enabled = []
    for pos, layer in enumerate(layers):
        on = pos >= lowest_position
        if not hasattr(layer, "gradient_checkpointing"):
            if on:
                raise InterlaceError(
                    f"decoder layer {type(layer).__name__} does not support gradient checkpointing; "
                    "set spec.finetune.gradientCheckpointing: false"
                )
            continue
        # torch types Module.__setattr__'s value as Tensor | Module; these are plain attributes.
        layer.gradient_checkpointing = on  # type: ignore[assignment]
        layer._gradient_checkpointing_func = fn  # type: ignore[assignment]
        if on:
            enabled.append(pos)
    return enabled


def prepare_student(
    model: nn.Module, plan: LayerPlan, *, freeze_lm_head: bool, gradient_checkpointing: bool
) -> FreezeSummary:
    """The pruned model as every training worker trains it: the plan's freezing, fp32 master copies of
    the trainable weights (a bf16 load stays bf16 where frozen; autocast runs the math in bf16),
    activation checkpointing from the lowest trainable layer up, train mode."""
    import torch

    summary = apply_freezing(model, plan, freeze_lm_head=freeze_lm_head)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if gradient_checkpointing:
        enable_checkpointing(model, summary.lowest_position)
    model.train()
    return summary
