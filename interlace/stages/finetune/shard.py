"""FSDP2 without a whole model on any GPU: the student is sharded before its weights exist.

Under `spec.finetune.parallelism: fsdp` every Ray Train worker (interlace.stages.finetune.loop)

1. builds the pruned model from its config with `load_model(..., empty=True)`: every parameter on
   the meta device (shape and dtype, no storage), the buffers computed for real on the CPU (they
   are small, and the non-persistent ones, the rotary embedding's inv_freq, are not in the
   checkpoint: a meta buffer would become garbage after `to_empty`);
2. applies `prepare_student` (freezing, fp32 master dtype for the trainable layers, activation
   checkpointing, train mode): on meta tensors this changes only metadata;
3. wraps with `_wrap` (FSDP2 `fully_shard` per decoder layer, the trainable head, then the root):
   every parameter becomes a meta DTensor whose local shard is about 1/world of it;
4. `load_sharded` (here): `to_empty` allocates only the local shards on the device, the buffers
   from step 1 are put back, and the weights come from the pruned checkpoint through torch's own
   `set_model_state_dict(full_state_dict=True, broadcast_from_rank0=True)`: rank 0 alone reads the
   checkpoint, into host memory (transformers' loader on the CPU: it maps the stored key layout to
   the model's, ties the head, rounds to the load dtype), every tensor is broadcast one at a time
   and each rank keeps only its shard. So a GPU never holds more than its shards plus one full
   tensor in flight; the other ranks' hosts hold no copy at all.

Why broadcast from rank 0 rather than every rank reading its own slices of the safetensors files:
torch's tool already knows FSDP2's sharding (uneven dim-0 chunks and their padding), checks the
keys strictly, casts to each parameter's dtype and handles tied parameters, and transformers' loader
knows the key layouts (the VLM families store the hub's older one), where a hand-written reader
would re-implement both. The cost is one host copy of the model on rank 0's node, for the length
of the load, and one broadcast per tensor, which a fast interconnect makes small next to a
finetune; a model too large for one node's host memory would need the per-rank reader.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interlace.errors import InterlaceError

if TYPE_CHECKING:
    import torch
    from torch import nn


def load_sharded(
    model: nn.Module, model_dir: Path, device: torch.device, *, dtype: str, trust_remote_code: bool = False
) -> None:
    """Materialize an FSDP2-wrapped model built on the meta device and load its weights sharded.

    `model` must come from `load_model(..., empty=True)` (real buffers, meta parameters), be
    prepared and wrapped; `model_dir` is the checkpoint it was built from, `dtype` the one it was
    built in. A collective: every rank calls it; only rank 0 reads the checkpoint.
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.tensor import DTensor

    meta_buffers = [n for n, b in model.named_buffers() if b.is_meta]
    if meta_buffers:
        raise InterlaceError(
            f"load_sharded: buffers {meta_buffers} are on the meta device (build with empty=True)"
        )
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    model.to_empty(device=device)
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)
    del buffers

    full = _full_state_dict(model_dir, dtype, trust_remote_code) if dist.get_rank() == 0 else {}
    set_model_state_dict(
        model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    )
    del full
    local = sum(p.to_local().nbytes for p in model.parameters() if isinstance(p, DTensor))
    logging.getLogger(__name__).info(
        "rank %d: FSDP2 student built on the meta device, %.1f MiB of parameter shards loaded on %s",
        dist.get_rank(),
        local / 2**20,
        device,
    )


def _full_state_dict(model_dir: Path, dtype: str, trust_remote_code: bool) -> dict[str, Any]:
    """The whole checkpoint on rank 0's host, under the model's own state-dict keys.

    transformers' own loader (on the CPU) reads it: it maps the keys a checkpoint is stored under to
    the model's (the VLM families save the hub's older layout), gives a tied head its embedding
    table, and rounds every weight to `dtype`, so an fp32 master copy of a trainable layer holds the
    same values as after a whole-model load in `dtype` and `.float()` (as under DDP).
    """
    from interlace.models.load import load_model

    loaded = load_model(
        str(model_dir),
        dtype=dtype,
        device="cpu",
        trust_remote_code=trust_remote_code,
        processor_optional=True,
    )
    return dict(loaded.model.state_dict())
