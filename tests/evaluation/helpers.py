"""A tiny base model and its pruned copy, through the project's own fixtures and surgery."""

from __future__ import annotations

import copy
from typing import Any

from interlace.schema.spec import LayerPlan
from interlace.stages.prune import prune_model
from tests.fixtures.tiny import tiny


def plan_dropping(num_layers: int, drop: list[int]) -> LayerPlan:
    """A valid plan: drop `drop`, finetune each dropped layer's successor, freeze the rest."""
    finetune = sorted({d + 1 for d in drop if d + 1 < num_layers and d + 1 not in drop})
    frozen = [i for i in range(num_layers) if i not in drop and i not in finetune]
    return LayerPlan(
        num_layers=num_layers, strategy="interlace", drop=drop, finetune=finetune, anchor=[], frozen=frozen
    )


def base_and_pruned(kind: str = "llama", drop: tuple[int, ...] = (2, 5)) -> tuple[Any, Any, Any, LayerPlan]:
    base, proc = tiny(kind)
    n = base.config.get_text_config().num_hidden_layers
    plan = plan_dropping(n, list(drop))
    pruned = prune_model(copy.deepcopy(base), plan, deepstack_policy="position")
    return base, pruned, proc, plan
