"""The explicit step that trains and caches the trained-here builtin models (`builtin:easyvqa-vl`,
`builtin:easyvqa-vl-tiny`).

The recipe and the construction of the model are interlace.builtin.easyvqa_vl; this module trains it
on builtin:easy-vqa rows read and encoded by interlace.data exactly as finetuning reads them, which is
why it sits above interlace.data (interlace.builtin, below it, only looks the checkpoint up). Run it
with `interlace builtin builtin:easyvqa-vl` or `ensure_built("easyvqa-vl")`; the runtime image can
do the same at build time.

The loop is its own, not the finetune stage's (interlace.stages.finetune): it is a single-process CPU
loop whose exact schedule (AdamW betas (0.9, 0.98), decay only on matrices, a cosine with a 5 % floor,
a seeded shuffle refilled per epoch) makes the cached checkpoint and the figures of docs/method.md;
the finetune stage runs under Ray Train with another schedule and data order, so reusing it would
change the weights (and need Ray to build a builtin).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import resource
import time
from pathlib import Path
from typing import Any

from interlace import builtin
from interlace.builtin.easyvqa_vl import RECIPES, Recipe, build_model, build_processor, build_tokenizer
from interlace.errors import InterlaceError

log = logging.getLogger(__name__)


def _lr_at(step: int, recipe: Recipe) -> float:
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(model: Any, processor: Any, recipe: Recipe) -> dict[str, Any]:
    """Train `model` in place on builtin:easy-vqa by the recipe; return loss and time figures."""
    import torch

    from interlace.data import load_samples
    from interlace.data.encode import collate, encode_sample
    from interlace.schema.spec import DataSpec

    spec = DataSpec(path="builtin:easy-vqa", fraction=1.0, max_samples=recipe.max_samples, max_images=1)
    samples = list(load_samples(spec))
    if not samples:
        raise RuntimeError("builtin:easy-vqa yielded no samples")
    pad = int(processor.tokenizer.pad_token_id)
    rng = random.Random(recipe.seed)
    order: list[int] = []
    old_threads = torch.get_num_threads()
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.98),
    )
    model.train()
    t0, c0 = time.monotonic(), _cpu_seconds()
    losses: list[float] = []
    try:
        for step in range(recipe.steps):
            batch_idx = []
            for _ in range(recipe.batch):
                if not order:
                    order = list(range(len(samples)))
                    rng.shuffle(order)
                batch_idx.append(order.pop())
            examples = [encode_sample(samples[i], processor, max_length=recipe.max_length) for i in batch_idx]
            batch = collate(examples, pad)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, recipe)
            out = model(**batch, use_cache=False)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(out.loss.detach()))
            if step % 50 == 0 or step == recipe.steps - 1:
                recent = losses[-50:]
                log.info("easyvqa-vl step %d/%d loss %.4f (%.0f s)", step + 1, recipe.steps,
                         sum(recent) / len(recent), time.monotonic() - t0)
    finally:
        model.eval()
        torch.set_num_threads(old_threads)
    tail = losses[-50:]
    return {
        "steps": recipe.steps,
        "samples_seen": recipe.steps * recipe.batch,
        "train_samples": len(samples),
        "final_loss": sum(tail) / len(tail),
        "first_loss": losses[0],
        "wall_seconds": round(time.monotonic() - t0, 1),
        "cpu_seconds": round(_cpu_seconds() - c0, 1),
    }


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def build(out: Path, recipe: Recipe) -> dict[str, Any]:
    """Tokenizer, processor, model; train; save a normal checkpoint directory into `out`."""
    tok = build_tokenizer()
    processor = build_processor(tok)
    model = build_model(recipe, tok)
    stats = train(model, processor, recipe)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    info = {
        "source": f"builtin:{recipe.name}",
        "recipe": dataclasses.asdict(recipe),
        "data": "builtin:easy-vqa (PyPI easy-vqa==1.0, train split)",
        "training": stats,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out / "interlace-builtin.json").write_text(json.dumps(info, indent=1) + "\n")
    log.info("built builtin:%s in %.0f s wall, %.0f s CPU", recipe.name, stats["wall_seconds"], stats["cpu_seconds"])
    return info


def ensure_built(name: str) -> Path:
    """`easyvqa-vl` or `easyvqa-vl-tiny` (with or without `builtin:`) -> its checkpoint directory,
    trained first (once per recipe fingerprint, under a lock) when it is not in the cache."""
    key = name.strip().removeprefix("builtin:")
    if key not in RECIPES:
        raise InterlaceError(f"unknown trained-here builtin {name!r}; known: {', '.join(RECIPES)}")
    recipe = RECIPES[key]
    target = builtin.easyvqa_vl_target(key)
    if not target.is_dir():
        log.warning("builtin:%s is not in the cache yet: training it now on CPU (%d steps)", key, recipe.steps)
    return builtin.build_once(target, lambda tmp: build(tmp, recipe))
