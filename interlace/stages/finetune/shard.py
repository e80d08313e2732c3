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
   safetensors file(s) into host memory, every tensor is broadcast one at a time and each rank
   keeps only its shard. So a GPU never holds more than its shards plus one full tensor in flight.

Why broadcast from rank 0 rather than every rank reading its own slices of the files: torch's tool
already knows FSDP2's sharding (uneven dim-0 chunks and their padding), checks the keys strictly,
casts to each parameter's dtype and handles tied parameters, where a hand-written reader would
re-implement all of it. The cost is one host copy of the model on rank 0's node (read from the
page cache) and one broadcast per tensor, which a fast interconnect makes small next to a
finetune; a model too large for one node's host memory would need the per-rank reader.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interlace.errors import InterlaceError

if TYPE_CHECKING:
    import torch
    from torch import nn


def load_sharded(model: nn.Module, model_dir: Path, device: torch.device, *, dtype: torch.dtype) -> None:
    """Materialize an FSDP2-wrapped model built on the meta device and load its weights sharded.

    `model` must come from `load_model(..., empty=True)` (real buffers, meta parameters), be
    prepared and wrapped; `model_dir` is the checkpoint it was built from, `dtype` the one it was
    built in: every weight is rounded to it before landing in its parameter, so an fp32 master copy
    of a trainable layer holds the same values as after a whole-model load in `dtype` and `.float()`
    (as under DDP). A collective: every rank calls it; only rank 0 reads the files.
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

    full: dict[str, Any] = _read_checkpoint(model, model_dir, dtype) if dist.get_rank() == 0 else {}
    set_model_state_dict(
        model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=True)
    )
    local = sum(p.to_local().nbytes for p in model.parameters() if isinstance(p, DTensor))
    logging.getLogger(__name__).info(
        "rank %d: FSDP2 student built on the meta device, %.1f MiB of parameter shards loaded on %s",
        dist.get_rank(),
        local / 2**20,
        device,
    )


def _read_checkpoint(model: nn.Module, model_dir: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors on the CPU in `dtype` (floating ones), under the model's own keys.

    A checkpoint of a model with tied embeddings stores the table once: the head's weight (tied, or
    untied by prepare_student for a trainable head) is then the input embedding's.
    """
    from safetensors.torch import load_file

    from interlace.models.load import find_parts

    index = model_dir / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else ["model.safetensors"]
    )
    full: dict[str, torch.Tensor] = {}
    for f in files:
        for k, v in load_file(str(model_dir / f), device="cpu").items():
            full[k] = v.to(dtype) if v.is_floating_point() else v

    parts = find_parts(model)
    aliases: dict[int, list[str]] = {}  # a parameter's every name (tied weights have several)
    for n, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(n)
    embed_names = aliases.get(id(getattr(parts.embed_tokens, "weight", None)), [])
    head = getattr(parts.lm_head, "weight", None)
    for n, p in model.named_parameters(remove_duplicate=False):
        sources = aliases[id(p)] + (embed_names if p is head else [])
        stored = next((s for s in sources if s in full), None)
        if n not in full and stored is not None:
            full[n] = full[stored]
    wanted = set(model.state_dict())
    missing, unexpected = sorted(wanted - set(full)), sorted(set(full) - wanted)
    if missing or unexpected:
        raise InterlaceError(
            f"model directory {model_dir}: its tensors do not match the model built from its config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return full
