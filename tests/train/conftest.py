"""Fixtures for the training tests: a tiny pruned model on disk, a learnable task, one Ray session.

Ray start costs seconds on 2 cores, so every Ray test shares one local session (`ray_session`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from interlace.data.sample import Sample, Turn
from interlace.schema.spec import FinetuneSpec, LayerPlan

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local test cluster: no token file under ~/.ray

# 8 decoder layers: drop 2 and 5, finetune 1 and 4, anchors 3 and 6 (as INTERLACE triplets would).
# After surgery the kept layers are [0, 1, 3, 4, 6, 7]: finetune layers sit at positions 1 and 3.
HAND_PLAN = {
    "num_layers": 8,
    "strategy": "interlace",
    "drop": [2, 5],
    "finetune": [1, 4],
    "anchor": [3, 6],
    "frozen": [0, 7],
    "windows": [[1, 2, 3], [4, 5, 6]],
}


def hand_plan() -> LayerPlan:
    return LayerPlan.model_validate(HAND_PLAN)


def pattern_samples(n: int = 64) -> list[Sample]:
    """A learnable task: the answer is always the same repeated phrase (loss must fall fast)."""
    return [
        Sample(
            turns=[
                Turn("user", f"Say the colours, number {k % 7}."),
                Turn("assistant", "red green blue red green blue red green blue"),
            ],
            source=f"pattern#{k}",
        )
        for k in range(n)
    ]


def pattern_spec(**overrides: Any) -> FinetuneSpec:
    """A short run on `pattern_samples` with a tiny model: lr high enough to learn visibly in a few
    steps, small batches, a checkpoint every 2 steps (so a crash has something to resume from)."""
    fields: dict[str, Any] = {
        "learning_rate": 1e-3,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "max_length": 64,
        "packing": False,
        "checkpoint_every_steps": 2,
    }
    return FinetuneSpec(**(fields | overrides))


def save_pruned(kind: str, plan: LayerPlan, out: Path) -> Path:
    """A tiny model of `kind`, pruned by `plan` with the real surgery, saved as an HF checkpoint."""
    from interlace.stages.prune import prune_model, save_model
    from tests.fixtures.tiny import tiny

    model, processor = tiny(kind)
    prune_model(model, plan, deepstack_policy="position")
    save_model(model, processor, out, plan=plan)
    return out


@pytest.fixture(scope="session")
def pruned_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LayerPlan]:
    plan = hand_plan()
    return save_pruned("llama", plan, tmp_path_factory.mktemp("pruned") / "llama"), plan


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    import ray

    from interlace.runtime.ray_cluster import start_ray

    start_ray(local=True, attempts=5)  # a loaded machine can make a Ray start fail; retry
    yield ray
    ray.shutdown()


def tiny_text_prunejob(root: Path, name: str, pruning: dict[str, Any]) -> dict[str, Any]:
    """A PruneJob of a tiny llama (from config) on a text file of pattern samples, on CPU, with no
    finetuning: calibration, evaluation and `pruning` as given (the target and auto tests)."""
    from tests.fixtures.tiny import save_tiny

    texts = [f"{s.turns[0].text} {s.turns[1].text}" for s in pattern_samples(32)]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    text = {"format": "text", "path": str(data), "fraction": 1.0}
    return {
        "apiVersion": "interlace.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": str(save_tiny("llama", root / "llama"))},
            "pruning": pruning,
            "calibration": {"data": text, "numSamples": 8, "batchSize": 4, "maxLength": 64},
            "finetune": {"enabled": False, "data": text},
            "evaluation": {"data": text, "maxSamples": 4, "speed": False},
            "resources": {"gpusPerWorker": 0},
        },
    }
