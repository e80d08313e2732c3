"""One optimizer step of interleaved finetuning, as every Ray Train worker (and bench/finetune.py) runs it.

`_wrap` puts the student under DDP or FSDP2; `accumulate_gradients` runs the micro-batches of one step
(next-token cross-entropy over the assistant tokens, plus the distillation KL against a frozen teacher
with spec.distillation, or against its precomputed top-k log-probabilities with distillation.topK:
`teacher_top_k`, `token_losses`), scaled so DDP/FSDP's gradient average is the exact token mean
of the effective batch; `apply_gradients` clips and steps. See interlace.stages.finetune.driver.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from interlace.runtime import costs
from interlace.schema.spec import DistillationSpec

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class TopKTargets:
    """The teacher's precomputed view of one micro-batch (spec.finetune.distillation.topK): for each
    trained token, in the order `token_losses` gathers them (labels != -100, row-major), the k largest
    temperature-softened log-probabilities over the whole vocabulary and their token ids."""

    log_p: torch.Tensor  # [trained tokens, k] float32, log softmax(teacher logits / T)
    ids: torch.Tensor  # [trained tokens, k] int32

    @property
    def nbytes(self) -> int:
        return int(self.log_p.numel() * self.log_p.element_size() + self.ids.numel() * self.ids.element_size())


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
    targets: list[TopKTargets] | None = None,
    reduce: bool | None = None,
) -> StepLosses:
    """Forward + backward over one optimizer step's micro-batches (the accumulation group).

    Each micro-batch's summed token loss is scaled by world / (assistant tokens in the whole step,
    all workers), so after DDP/FSDP average the gradients over workers they are the gradient of the
    token-mean loss of the effective batch. With `teacher` and `distillation` the summed token loss
    is (1 - w) x cross-entropy + w x T^2 x KL(teacher || student) (see `token_losses`); `targets`
    (one per micro-batch, from `teacher_top_k`) stands in for the teacher with distillation.topK.
    Returns the step's losses and counts, summed over all workers. `reduce` (default: world > 1)
    all-reduces the counts and sums over the process group; True at world 1 puts the same two
    collectives on the wire (bench/gpu.py, so that one GPU exercises the multi-GPU path).
    """
    import torch
    import torch.distributed as dist

    distill = distillation if teacher is not None or targets is not None else None
    if targets is not None and len(targets) != len(group):
        raise ValueError(f"{len(targets)} precomputed teacher targets for {len(group)} micro-batches")
    # The step's counts come from the host batches (no device round trip); with `reduce` they are
    # all-reduced on the training device (the process group Ray Train makes for GPUs is NCCL, which has
    # no CPU backend: a CPU tensor there fails at the first step; bench/rehearse.py shows it) and read
    # back once: the loss scale of every micro-batch needs the step's global label count.
    n_labels_here = sum(int((b["labels"][:, 1:] != -100).sum()) for b, _ in group)
    n_tokens_here = sum(n for _, n in group)
    reduce = world > 1 if reduce is None else reduce
    if reduce:
        counts = torch.tensor([n_labels_here, n_tokens_here], dtype=torch.float64, device=device)
        dist.all_reduce(counts)
        all_labels, all_tokens = counts.tolist()  # one host sync per optimizer step
    else:
        all_labels, all_tokens = float(n_labels_here), float(n_tokens_here)
    n_labels, n_tokens = max(all_labels, 1.0), int(all_tokens)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, ce, kl (summed over tokens)
    for i, (batch, _) in enumerate(group):
        with _no_sync(model, i == len(group) - 1), _autocast(device, amp_dtype):
            ce, kl = token_losses(
                model,
                batch,
                device,
                teacher=teacher if distill else None,
                temperature=distill.temperature if distill else 1.0,
                targets=targets[i] if distill and targets is not None else None,
            )
        part = ce if kl is None or distill is None else (1 - distill.weight) * ce + distill.weight * kl
        loss = part * (world / n_labels)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        kl_part = kl.detach() if kl is not None else ce.new_zeros(())
        sums += torch.stack([part.detach(), ce.detach(), kl_part]).double()  # no host sync per micro-batch
    if reduce:
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
    targets: TopKTargets | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed next-token cross-entropy over assistant tokens (labels != -100) and, with a `teacher`,
    the summed T^2 x KL(teacher || student) of the temperature-T softened next-token distributions
    over the same tokens (None without a teacher).

    With `targets` (the teacher's precomputed top-k, `teacher_top_k`) instead of a teacher, the KL
    runs over each token's k teacher tokens: p = the teacher renormalised over them, q = the
    student's softened probabilities over the whole vocabulary at those ids,
    T^2 x sum_k p (log p - log q). It is >= 0, equals the full KL when k is the vocabulary, and for
    k smaller it also pushes the student's mass into the teacher's top k.

    Logits exist only at the labelled positions: the model projects just those hidden states onto the
    vocabulary (`logits_to_keep`), and the cross-entropy runs in float32 chunk by chunk
    (`cross_entropy_sum`), so neither the [batch, length, vocab] logits nor a float32 copy of the
    trained ones is ever materialised for the loss. The teacher runs without gradients.
    """
    import torch
    import torch.nn.functional as F

    inputs, target, mask = _trained_tokens(batch, device)
    keep = _logit_positions(mask)
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # [trained tokens, vocab]
    ce = cross_entropy_sum(logits, target)
    t = float(temperature)
    if targets is None and teacher is None:
        return ce, None
    picked = logits.float()
    if targets is not None:
        if targets.log_p.shape[0] != picked.shape[0]:
            raise ValueError(
                f"precomputed teacher targets cover {targets.log_p.shape[0]} tokens, the batch trains "
                f"{picked.shape[0]}: they were computed for other micro-batches"
            )
        student_log_q = F.log_softmax(picked / t, dim=-1).gather(-1, targets.ids.to(device).long())
        teacher_log_p = F.log_softmax(targets.log_p.to(device), dim=-1)  # renormalised over the k ids
        p = teacher_log_p.exp()
        # 0 x log 0 = 0: an id the teacher gives no probability (-inf, e.g. a masked token) adds nothing.
        kl = torch.where(p > 0, p * (teacher_log_p - student_log_q), torch.zeros_like(p)).sum()
        return ce, kl * (t * t)
    assert teacher is not None
    with torch.no_grad():
        t_logits = teacher(**inputs, use_cache=False, logits_to_keep=keep).logits.float()
    student_log_p = F.log_softmax(picked / t, dim=-1)
    teacher_log_p = F.log_softmax(t_logits / t, dim=-1)
    # KL(p_teacher || p_student) summed over the vocabulary and the tokens.
    kl = F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="sum")
    return ce, kl * (t * t)


# Tokens per chunk of the cross-entropy: its float32 temporaries (the upcast logits, their log-softmax
# and its gradient) exist for one chunk at a time, about 18 bytes x LOSS_CHUNK_TOKENS x vocabulary
# (1.4 GB at Qwen3-VL's 151,936), not for every trained token of the micro-batch. The memory estimate
# (interlace.runtime.costs) counts the same chunk.
LOSS_CHUNK_TOKENS = costs.LOSS_CHUNK_TOKENS


def cross_entropy_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of `logits` [tokens, vocab] (the model's dtype) against `target` [tokens],
    in float32, chunk by chunk: each chunk's float32 work is recomputed in the backward pass (activation
    checkpointing) instead of being kept, so only the model's own logits and their gradient span all
    the tokens. Equal to F.cross_entropy(logits.float(), target, reduction="sum") to float rounding."""
    import torch
    from torch.utils.checkpoint import checkpoint

    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    # split (not slicing) so the backward pass assembles one gradient of the logits, not one per chunk
    for x, y in zip(logits.split(LOSS_CHUNK_TOKENS), target.split(LOSS_CHUNK_TOKENS), strict=True):
        total = total + checkpoint(_cross_entropy_chunk, x, y, use_reentrant=False)
    return total


def _cross_entropy_chunk(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    import torch.nn.functional as F

    return F.cross_entropy(x.float(), y, reduction="sum")


def _logit_positions(mask: torch.Tensor) -> torch.Tensor:
    """The positions whose logits the loss reads, as the boolean [batch, length] mask transformers'
    `logits_to_keep` takes: position t predicts token t + 1, so the mask of trained next tokens
    (`_trained_tokens`, [batch, length - 1]) shifted into place. The model then projects only those
    hidden states onto the vocabulary and returns [trained tokens, vocab], row-major, the order
    `target[mask]` has."""
    import torch.nn.functional as F

    return F.pad(mask, (0, 1), value=False)


def _trained_tokens(
    batch: dict[str, torch.Tensor], device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The model inputs on `device`, the trained next-token targets (labels != -100, row-major) and the
    [batch, length - 1] mask of them: one definition for `token_losses` and `teacher_top_k`, so their
    tokens line up. The targets are picked on the host, where the labels are, so no data-dependent
    index runs on the device; copies to a GPU are non_blocking (from page-locked memory: the training
    loop's batches are pinned, the picked targets are pinned here)."""
    inputs = {k: _to_device(v, device) for k, v in batch.items() if k != "labels"}
    labels = batch["labels"]
    target = labels[:, 1:]
    mask = target != -100
    if labels.device.type == "cpu":
        return inputs, _to_device(target[mask], device), _to_device(mask, device)
    return inputs, target[mask], mask  # labels already on the device (bench/rehearse.py's fakes)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`; host -> GPU without blocking the host (pinned first if it is not)."""
    import torch

    if device.type == "cuda" and t.device.type == "cpu" and torch.cuda.is_available():
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)


def teacher_top_k(
    teacher: nn.Module, batch: dict[str, torch.Tensor], device: torch.device, *, temperature: float, k: int
) -> TopKTargets:
    """The teacher's top-k softened log-probabilities for the trained tokens of one micro-batch, on
    the host: what `token_losses(targets=...)` needs instead of the teacher. Same inputs, same mask and
    same order as `token_losses`, so the two line up token by token."""
    import torch
    import torch.nn.functional as F

    inputs, _, mask = _trained_tokens(batch, device)
    with torch.no_grad():
        logits = teacher(**inputs, use_cache=False, logits_to_keep=_logit_positions(mask)).logits.float()
        log_p = F.log_softmax(logits / float(temperature), dim=-1)
        top = log_p.topk(min(k, log_p.shape[-1]), dim=-1)
    return TopKTargets(log_p=top.values.cpu(), ids=top.indices.to(torch.int32).cpu())
