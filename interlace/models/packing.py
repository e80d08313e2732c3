"""Per-sample positions for packing batches with images (interlace.data.encode.collate(positions=...)).

A packed row holds several samples one after the other. Each sample must get the positions the
model would give it alone; the attention isolation itself comes from the restarting text positions
(see interlace.data.encode).

* Qwen2-VL, Qwen2.5-VL, Qwen3-VL: 3-D M-RoPE positions (temporal, height, width) that follow each
  image's grid. They are computed by the model class's own `get_rope_index`, called on the sample
  alone with its own `image_grid_thw`, exactly as the model's forward computes them for an unpacked
  batch of that one sample. `get_rope_index` is a method of the model but reads only the config
  (the vision config's spatial merge size, Qwen2.5-VL's tokens per second for videos), so it runs
  here on a small stand-in that carries the config: no weights, picklable (DataLoader workers).
* LLaVA: 1-D positions (its language model is a plain Llama-style decoder; the image features
  replace the image tokens in place), i.e. 0..n-1 per sample.
* Anything else: None; collate pads batches with images and says so once in the log.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

# model_type -> (module, model class whose get_rope_index gives the sample's M-RoPE positions)
MROPE_FAMILIES: dict[str, tuple[str, str]] = {
    "qwen2_vl": ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VLModel"),
    "qwen2_5_vl": ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLModel"),
    "qwen3_vl": ("transformers.models.qwen3_vl.modeling_qwen3_vl", "Qwen3VLModel"),
}
TEXT_POSITION_FAMILIES: tuple[str, ...] = ("llava",)
# The extra per-sample inputs get_rope_index takes besides input_ids and mm_token_type_ids.
_ROPE_INPUTS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")


class MRopePositions:
    """A Qwen-VL sample's M-RoPE position ids, [3, n], as the model computes them for it alone."""

    def __init__(self, config: Any) -> None:
        if config.model_type not in MROPE_FAMILIES:
            raise ValueError(f"no M-RoPE positions for model_type {config.model_type!r}")
        self.config = config

    def __call__(self, example: Mapping[str, Any]) -> torch.Tensor:
        import torch

        ids = example["input_ids"]
        if "mm_token_type_ids" not in example:
            if any(k in example for k in _ROPE_INPUTS):
                raise ValueError(
                    "an example with images but no mm_token_type_ids: M-RoPE cannot be computed "
                    "(the model's forward refuses it as well)"
                )
            return torch.arange(ids.shape[0]).expand(3, -1)
        rope_index = _rope_index_of(self.config.model_type)
        extra = {k: example[k] for k in _ROPE_INPUTS if k in example}
        with torch.no_grad():
            pos, _deltas = rope_index(
                _ConfigHolder(self.config),
                ids[None],
                mm_token_type_ids=example["mm_token_type_ids"][None],
                **extra,
            )
        return pos[:, 0]


class TextPositions:
    """0..n-1: the positions of a sample of a model with 1-D rope (LLaVA), alone."""

    def __call__(self, example: Mapping[str, Any]) -> torch.Tensor:
        import torch

        return torch.arange(example["input_ids"].shape[0])


class _ConfigHolder:
    """The `self` that a model class's get_rope_index reads: its config and get_vision_position_ids."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.get_vision_position_ids = functools.partial(_vision_position_ids_of(config.model_type), self)


@functools.cache
def _model_class(model_type: str) -> Any:
    module, name = MROPE_FAMILIES[model_type]
    return getattr(importlib.import_module(module), name)


def _rope_index_of(model_type: str) -> Any:
    return _model_class(model_type).get_rope_index


def _vision_position_ids_of(model_type: str) -> Any:
    return _model_class(model_type).get_vision_position_ids


def sample_positions(config: Any) -> MRopePositions | TextPositions | None:
    """What interlace.data.encode.collate(positions=...) needs to pack batches with images for a
    model of this config (the top-level config of the model), or None where the family cannot pack
    them (they are then padded)."""
    model_type = getattr(config, "model_type", None)
    if model_type in MROPE_FAMILIES:
        return MRopePositions(config)
    if model_type in TEXT_POSITION_FAMILIES:
        return TextPositions()
    return None
