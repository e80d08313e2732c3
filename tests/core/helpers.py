"""Small helpers shared by the core tests."""

from __future__ import annotations

from typing import Any

import torch

from interlace.schema.spec import LayerPlan
from interlace.stages.analyze.calibration import calibration_batches
from tests.fixtures.tiny import tiny_samples


def plan_dropping(num_layers: int, drop: list[int], strategy: str = "consecutive") -> LayerPlan:
    """A valid plan that drops `drop` and finetunes the layer after each dropped run."""
    d = set(drop)
    tune = sorted({i + 1 for i in d if i + 1 not in d and i + 1 < num_layers})
    frozen = [i for i in range(num_layers) if i not in d and i not in tune]
    return LayerPlan(
        num_layers=num_layers, strategy=strategy, drop=sorted(d), finetune=tune, anchor=[], frozen=frozen
    )


def sample_batch(processor: Any, *, n: int = 3, images: bool = True, side: str = "right") -> dict[str, Any]:
    tok = getattr(processor, "tokenizer", processor)
    old = tok.padding_side
    tok.padding_side = side
    try:
        return next(
            iter(calibration_batches(tiny_samples(n, images=images), processor, batch_size=n, max_length=256))
        )
    finally:
        tok.padding_side = old


def logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch, use_cache=False).logits


def greedy(model: Any, batch: dict[str, Any], *, use_cache: bool, new_tokens: int = 8) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            **batch,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=use_cache,
        )
