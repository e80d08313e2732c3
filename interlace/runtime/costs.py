"""What a finetuning plan costs, counted from the model config: FLOPs per step and GPU memory.

Plain Python over a config (a transformers config object or its dict): no torch, no pydantic, so
bench/gpu.py can use it on a bare GPU host and the pipeline can check a plan before any GPU hour.

FLOPs (per token, decoder-only view; embeddings, norms and the loss are left out):

* a decoder layer's forward: 2 x its matmul parameters + causal attention 2 x heads x head_dim x T;
* recomputation (activation checkpointing): the forward again, for checkpointed layers;
* activation gradients: the matmuls' input gradients (2 x matmul parameters) + attention backward
  (2 x its forward), for every layer from the lowest trainable one up;
* weight gradients: 2 x matmul parameters, only for trainable layers;
* lm_head (frozen): forward + its input gradient, 2 x 2 x hidden x vocab.

`structural_ratio` is interleaved / full finetune of the same pruned model under this count: the
step-time ratio a perfectly compute-bound implementation would reach. It is a limit, not a
prediction: memory-bound kernels, the optimizer step and launch overheads do not shrink with it.

Memory (`memory_estimate`, bytes per GPU, the worst case: every micro-batch full at maxLength, every
token labelled): frozen weights in the load dtype; trainable parameters as fp32 master weights + AdamW
exp_avg/exp_avg_sq (12 bytes each), plus a gradient bucket copy under DDP with more than one worker;
the activations one micro-batch keeps for the backward (the checkpointed layers' inputs, or every
trainable-range layer's without checkpointing); then the larger of the backward's two phases: the
loss (the logits at the labelled positions only and their gradient, bf16, the float32 temporaries of
one cross-entropy chunk of `LOSS_CHUNK_TOKENS` tokens, 18 bytes x vocab per token) and the layers
(the trainable layers' fp32 gradients, one checkpointed layer's full activations while it is
recomputed). Under FSDP2: the shards plus the unsharded parameters of the layer being computed and
of the next one (prefetched) and of the root group (embeddings, vision tower, head). bench/rehearse.py measures the same step's peak under fake tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GIB = 2**30
# Tokens per chunk of the training loss's float32 cross-entropy (interlace.stages.finetune.step).
LOSS_CHUNK_TOKENS = 512
LOSS_CHUNK_BYTES_PER_LOGIT = 18.0  # fp32 upcast 4 + log-softmax 4 + its gradient 4 + input gradient 4 + bf16 2


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


@dataclass(frozen=True)
class DecoderShape:
    """The decoder's sizes, read from a config (a VLM's text_config when it has one)."""

    num_layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_config(cls, config: Any) -> DecoderShape:
        text = _get(config, "text_config") or config
        hidden = int(_get(text, "hidden_size"))
        heads = int(_get(text, "num_attention_heads"))
        return cls(
            num_layers=int(_get(text, "num_hidden_layers")),
            hidden=hidden,
            intermediate=int(_get(text, "intermediate_size")),
            heads=heads,
            kv_heads=int(_get(text, "num_key_value_heads") or heads),
            head_dim=int(_get(text, "head_dim") or hidden // heads),
            vocab=int(_get(text, "vocab_size") or _get(config, "vocab_size")),
        )

    @property
    def layer_matmul_params(self) -> int:
        """q, k, v, o projections and the gated MLP (gate, up, down) of one decoder layer."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return self.hidden * (2 * q + 2 * kv) + 3 * self.hidden * self.intermediate

    def layer_forward_flops(self, seq_len: int) -> tuple[float, float]:
        """(matmul, attention) forward FLOPs per token of one decoder layer at sequence length T."""
        return 2.0 * self.layer_matmul_params, 2.0 * self.heads * self.head_dim * seq_len

    @property
    def head_flops(self) -> float:
        return 2.0 * self.hidden * self.vocab


def step_flops_per_token(
    shape: DecoderShape,
    *,
    num_layers: int,
    trainable: Iterable[int],
    seq_len: int,
    checkpointing: bool,
) -> float:
    """Forward + recomputation + backward FLOPs per token of one training step of a `num_layers`
    decoder in which the layers at positions `trainable` train (see the module docstring)."""
    train = set(trainable)
    if not train:
        raise ValueError("no trainable layer")
    lowest = min(train)
    lin, att = shape.layer_forward_flops(seq_len)
    total = 2.0 * shape.head_flops  # frozen lm_head: forward + input gradient
    for pos in range(num_layers):
        total += lin + att
        if pos >= lowest:
            if checkpointing:
                total += lin + att
            total += lin + 2.0 * att
            if pos in train:
                total += lin
    return total


def structural_ratio(
    shape: DecoderShape, *, num_layers: int, trainable: Iterable[int], seq_len: int, checkpointing: bool
) -> float:
    """Interleaved / full-finetune step FLOPs for the same pruned model (full: every decoder layer
    trains, checkpointing, when on, on every layer)."""
    inter = step_flops_per_token(
        shape, num_layers=num_layers, trainable=trainable, seq_len=seq_len, checkpointing=checkpointing
    )
    full = step_flops_per_token(
        shape, num_layers=num_layers, trainable=range(num_layers), seq_len=seq_len, checkpointing=checkpointing
    )
    return inter / full


@dataclass(frozen=True)
class MemoryEstimate:
    """A worker's peak GPU bytes by part. The backward pass has two phases that never overlap: first
    the loss (`logits`: the logits at the labelled positions, their gradient, one float32 chunk of the
    cross-entropy, the hidden states the head reads), then the decoder layers (`backward`: the
    trainable layers' gradients as they appear, one checkpointed layer recomputed); the peak counts
    the larger next to what lives through both."""

    frozen_weights: float
    trainable_state: float  # fp32 master weights + AdamW's two moments (+ DDP's gradient buckets)
    activations: float  # what the forward keeps for the backward
    logits: float  # the loss phase
    backward: float = 0.0  # the layer phase: trainable gradients + one recomputed layer
    teacher: float = 0.0  # spec.finetune.distillation: the unpruned teacher's weights and logits
    teacher_precomputed: bool = False  # distillation.topK: `teacher` is what the pass before training adds

    @property
    def total(self) -> float:
        return (
            self.frozen_weights + self.trainable_state + self.activations + max(self.logits, self.backward)
            + self.teacher
        )

    def describe(self) -> str:
        parts = (
            ("frozen weights", self.frozen_weights),
            ("trainable weights + AdamW", self.trainable_state),
            ("activations", self.activations),
            ("then the larger of logits + loss", self.logits),
            ("gradients + recompute", self.backward),
            *(
                (("distillation teacher" + (" (precomputed before training)" if self.teacher_precomputed else ""),
                  self.teacher),)
                if self.teacher
                else ()
            ),
        )
        return f"{self.total / GIB:.1f} GiB (" + ", ".join(f"{n} {v / GIB:.1f}" for n, v in parts) + ")"


def memory_estimate(
    shape: DecoderShape,
    *,
    total_params: int,
    num_layers: int,
    trainable: Iterable[int],
    tokens_per_micro_batch: int,
    checkpointing: bool,
    weight_bytes: int = 2,
    world_size: int = 1,
    sharded: bool = False,
    teacher_params: int = 0,
    teacher_precomputed: bool = False,
) -> MemoryEstimate:
    """GPU bytes one worker needs to finetune a `num_layers` decoder (positions `trainable` train) of a
    model with `total_params` parameters, micro-batches of `tokens_per_micro_batch` tokens (every one
    labelled: the worst case).

    Trainable parameters: fp32 master weights and AdamW's two moments (12 bytes each) live throughout;
    their fp32 gradients (4) appear during the layer phase of the backward. DDP with more than one
    worker adds a gradient bucket copy (4). `sharded` (FSDP2) divides weights, state and gradients by
    `world_size` and adds the unsharded parameters of two layers (the one computed, the next one
    prefetched) and of the root group (everything outside the decoder layers), which stays gathered
    from its forward to its backward. The two phases of the backward (see MemoryEstimate) count as the larger.
    `teacher_params` (distillation) adds the unpruned teacher: a full replica on every worker, never
    sharded, in the load dtype, plus its bf16 logits and the fp32 softened log-probabilities of teacher
    and student. `teacher_precomputed` (distillation.topK): the teacher runs before training, next to
    the student's weights and (after a resume) the loaded optimizer state, but not next to activations
    or the student's logits, so the peak is max(training, weights + trainable state + the teacher's
    forward: its weights, bf16 logits and fp32 log-probabilities); `teacher` is what that pass adds
    above training.
    """
    train = sorted(set(trainable))
    if not train:
        raise ValueError("no trainable layer")
    per_layer = shape.layer_matmul_params
    n_train = per_layer * len(train)
    frozen = float(max(total_params - n_train, 0) * weight_bytes)
    state = n_train * 12.0  # fp32 master weights, AdamW exp_avg + exp_avg_sq
    grads = n_train * 4.0
    if world_size > 1 and not sharded:
        state += n_train * 4.0  # DDP gradient buckets
    if sharded and world_size > 1:
        frozen /= world_size
        state /= world_size
        grads /= world_size
        frozen += 2.0 * per_layer * weight_bytes  # one layer all-gathered, the next one prefetched
        # The root group (embeddings, vision tower, a frozen head: all outside the decoder layers)
        # stays unsharded from its forward to its backward.
        outside = max(total_params - num_layers * per_layer, 0)
        frozen += outside * weight_bytes * (1.0 - 1.0 / world_size)
    q = shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    # Saved tensors of one decoder layer per token (bf16): norms' inputs, q/k/v, attention output,
    # the o-projection input, the MLP's gate/up/activation/down input.
    layer_act = 2.0 * (6 * shape.hidden + 2 * q + 2 * kv + 4 * shape.intermediate)
    span = num_layers - train[0]  # layers the backward pass goes through
    t = float(tokens_per_micro_batch)
    acts = t * span * 2.0 * shape.hidden if checkpointing else t * span * layer_act
    # The loss phase: bf16 logits at the labelled positions and their gradient, one float32 chunk of
    # the cross-entropy, the final hidden states and their labelled gather (bf16).
    logits = (
        t * shape.vocab * 2.0 * 2
        + min(t, LOSS_CHUNK_TOKENS) * shape.vocab * LOSS_CHUNK_BYTES_PER_LOGIT
        + t * shape.hidden * 2.0 * 2
    )
    backward = grads + (t * layer_act if checkpointing else 0.0)
    teacher = teacher_params * float(weight_bytes) + t * shape.vocab * (2.0 + 2 * 4.0) if teacher_params else 0.0
    if teacher_params and teacher_precomputed:
        before_training = frozen + state + teacher_params * float(weight_bytes) + t * shape.vocab * (2.0 + 4.0)
        teacher = max(0.0, before_training - (frozen + state + acts + max(logits, backward)))
    return MemoryEstimate(
        frozen_weights=frozen, trainable_state=state, activations=acts, logits=logits, backward=backward,
        teacher=teacher, teacher_precomputed=bool(teacher_params) and teacher_precomputed,
    )


def parse_quantity(value: str | int) -> float:
    """A Kubernetes quantity ("80Gi", "141G", "1.5Ti", "81920Mi") in bytes."""
    units = {
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
        "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
    }
    s = str(value).strip()
    for suffix in sorted(units, key=len, reverse=True):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * units[suffix]
    return float(s)
