"""Layer surgery: remove decoder layers and save a normal HF checkpoint (method section 3).

What `prune_model` changes, in place:

* the decoder's `layers` ModuleList keeps only the plan's surviving layers, in original order (the
  layer modules themselves are untouched, so their parameters stay bit-identical);
* every module inside a surviving layer that has a `layer_idx` (the attention modules, used by the
  KV cache) is renumbered to the layer's new position; the reference skipped this and its in-memory
  generation with a KV cache failed;
* the text config: `num_hidden_layers`, per-layer lists (`layer_types`, `no_rope_layers`), layer
  index lists (`mlp_only_layers`) and the `max_window_layers` threshold of Qwen2-style configs;
* provenance on the top-level config: `interlace_kept_layers` (original index of each new position;
  composed when an already pruned model is pruned again), `interlace_num_layers_before`,
  `interlace_deepstack_policy`, and `interlace_plan` (the last plan applied).

DeepStack (Qwen3-VL): the text model adds deepstack feature j after the decoder layer at POSITION j.
* ``protect``: the receiving layers must survive. Since the plan never drops them, they keep
  positions 0..n-1 and the features are added after exactly the same original layers as before. A plan
  that drops one of them is rejected (protect them with `interlace.stages.plan.protected_layers`).
* ``position``: the reference's behaviour, nothing is done: whatever layers end up at positions
  0..n-1 receive the features.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interlace.artifacts import normal_modes, temp_dir
from interlace.errors import InterlaceError
from interlace.models.load import find_parts
from interlace.stages.plan import save_plan

if TYPE_CHECKING:  # types only: surgery works without pydantic (bench/gpu.py on a bare GPU host)
    from interlace.schema.spec import DeepstackPolicy, LayerPlan

# The values of interlace.schema.spec.DeepstackPolicy (tests/core/test_surgery.py checks they agree).
DEEPSTACK_POLICIES: tuple[str, ...] = ("protect", "position")

# Config lists with one entry per decoder layer, and lists of decoder layer indices.
PER_LAYER_LISTS: tuple[str, ...] = ("layer_types", "no_rope_layers", "sliding_window_pattern_list")
LAYER_INDEX_LISTS: tuple[str, ...] = ("mlp_only_layers",)


def kept_layers(plan: LayerPlan) -> list[int]:
    """Original indices of the surviving layers, in order."""
    drop = set(plan.drop)
    return [i for i in range(plan.num_layers) if i not in drop]


def kept_positions(plan: LayerPlan) -> dict[int, int]:
    """Original index -> new position, for every surviving layer."""
    return {orig: pos for pos, orig in enumerate(kept_layers(plan))}


def _text_configs(model: Any, owner: Any) -> list[Any]:
    cfg = model.config
    out = [cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg]
    own = getattr(owner, "config", None)
    if own is not None and all(own is not c for c in out):
        out.append(own)
    return out


def _update_text_config(tc: Any, kept: list[int], old_n: int) -> None:
    pos = {orig: p for p, orig in enumerate(kept)}
    tc.num_hidden_layers = len(kept)
    for name in PER_LAYER_LISTS:
        val = getattr(tc, name, None)
        if isinstance(val, list | tuple) and len(val) == old_n:
            setattr(tc, name, [val[i] for i in kept])
    for name in LAYER_INDEX_LISTS:
        val = getattr(tc, name, None)
        if isinstance(val, list | tuple):
            setattr(tc, name, [pos[i] for i in val if i in pos])
    mwl = getattr(tc, "max_window_layers", None)
    if isinstance(mwl, int) and not isinstance(mwl, bool) and mwl < old_n:
        # layers at original index >= max_window_layers use sliding windows: keep the same set.
        tc.max_window_layers = sum(1 for i in kept if i < mwl)


def _renumber(layer: Any, new_idx: int) -> int:
    n = 0
    for m in layer.modules():
        if hasattr(m, "layer_idx") and isinstance(m.layer_idx, int):
            m.layer_idx = new_idx
            n += 1
    return n


def check_plan(plan: LayerPlan, num_layers: int, *, deepstack_layers: list[int], policy: str) -> None:
    if plan.num_layers != num_layers:
        raise InterlaceError(
            f"the plan is for a {plan.num_layers}-layer model but this model has {num_layers} decoder layers"
        )
    if policy == "protect":
        hit = sorted(set(plan.drop) & set(deepstack_layers))
        if hit:
            raise InterlaceError(
                f"the plan drops layer(s) {hit} which receive Qwen3-VL DeepStack features; with "
                f"deepstackPolicy=protect, protect layers {deepstack_layers} when planning (or use "
                "deepstackPolicy=position)"
            )


def prune_model(model: Any, plan: LayerPlan, *, deepstack_policy: DeepstackPolicy | str = "protect") -> Any:
    """Remove `plan.drop` from `model` in place (see the module docstring). Returns the model."""
    from torch import nn

    policy = str(deepstack_policy)
    if policy not in DEEPSTACK_POLICIES:
        raise InterlaceError(f"deepstack policy {deepstack_policy!r} is not one of {', '.join(DEEPSTACK_POLICIES)}")
    parts = find_parts(model)
    old_n = len(parts.layers)
    # A model pruned before: the plan numbers its current layers; provenance maps back to the original.
    before = getattr(model.config, "interlace_kept_layers", None)
    if before is not None and len(before) != old_n:
        raise InterlaceError(
            f"config.interlace_kept_layers has {len(before)} entries but the model has {old_n} layers"
        )
    check_plan(plan, old_n, deepstack_layers=parts.deepstack_layers, policy=policy)
    kept = kept_layers(plan)
    new_layers = nn.ModuleList([parts.layers[i] for i in kept])
    for p, layer in enumerate(new_layers):
        _renumber(layer, p)
    parts.layers_owner.layers = new_layers
    for tc in _text_configs(model, parts.layers_owner):
        _update_text_config(tc, kept, old_n)
    cfg = model.config
    cfg.interlace_kept_layers = [before[i] for i in kept] if before is not None else kept
    cfg.interlace_num_layers_before = getattr(cfg, "interlace_num_layers_before", None) or old_n
    cfg.interlace_deepstack_policy = policy if parts.deepstack_layers else None
    cfg.interlace_plan = _plan_dict(plan)
    return model


def _plan_dict(plan: Any) -> dict[str, Any]:
    """A LayerPlan as JSON data; also a plain dataclass with the same fields (bench/gpu.py's)."""
    if hasattr(plan, "model_dump"):
        return plan.model_dump(mode="json")
    import dataclasses

    return dataclasses.asdict(plan)


def _atomic_dir(out: Path, overwrite: bool) -> tuple[Path, Path]:
    if out.exists() and not out.is_dir():
        raise InterlaceError(f"output {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InterlaceError(f"output directory {out} exists and is not empty; choose a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out.parent, prefix=f".{out.name}.", suffix=".partial")
    return out, tmp


def save_model(
    model: Any,
    processor: Any,
    out_dir: str | Path,
    *,
    plan: LayerPlan | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a normal HF checkpoint (config, safetensors, generation config, processor/tokenizer files,
    and `interlace_plan.json` when a plan is given). Atomic: written to a sibling temp directory that
    is renamed into place at the end, so a failure leaves nothing half-written at `out_dir`."""
    out, tmp = _atomic_dir(Path(out_dir), overwrite)
    try:
        model.save_pretrained(tmp)
        if processor is not None:
            processor.save_pretrained(tmp)
        if plan is not None:
            save_plan(plan, tmp / "interlace_plan.json")
        normal_modes(tmp)  # transformers leaves model.safetensors 0600
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
