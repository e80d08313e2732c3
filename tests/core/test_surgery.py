"""Surgery on every supported family: reload, logits, KV-cache generation, bit-identical weights,
config lists, DeepStack policy, atomic save."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from interlace.errors import InterlaceError
from interlace.models.load import find_parts
from interlace.stages.prune import kept_positions, prune_model, save_model
from tests.core.helpers import greedy, logits, plan_dropping, sample_batch
from tests.fixtures.tiny import KINDS, VLM_KINDS, tiny

DROP = [3, 5]


def _snapshot(layers) -> list[dict[str, torch.Tensor]]:
    return [{k: v.detach().clone() for k, v in layer.state_dict().items()} for layer in layers]


@pytest.mark.parametrize("kind", KINDS)
def test_prune_save_reload(kind: str, tmp_path: Path) -> None:
    model, proc = tiny(kind)
    before = _snapshot(find_parts(model).layers)
    plan = plan_dropping(8, DROP)
    prune_model(model, plan, deepstack_policy="protect")
    parts = find_parts(model)
    assert len(parts.layers) == 6 and parts.text_config.num_hidden_layers == 6
    kept = [0, 1, 2, 4, 6, 7]
    assert model.config.interlace_kept_layers == kept and kept_positions(plan) == {
        o: p for p, o in enumerate(kept)
    }
    for pos, layer in enumerate(parts.layers):
        idx = [m.layer_idx for m in layer.modules() if hasattr(m, "layer_idx")]
        assert idx and set(idx) == {pos}

    images = kind in VLM_KINDS
    batch = sample_batch(proc, images=images)
    want = logits(model, batch)

    old_umask = os.umask(0o022)
    try:
        out = save_model(model, proc, tmp_path / "pruned", plan=plan)
    finally:
        os.umask(old_umask)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    # readable by the other users of a shared volume: 0755 directory, 0644 files (not mkdtemp's 0700)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in out.iterdir()} == {f.name: "0o644" for f in out.iterdir()}
    assert json.loads((out / "interlace_plan.json").read_text())["drop"] == DROP
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left
    cls = AutoModelForImageTextToText if images else AutoModelForCausalLM
    back = cls.from_pretrained(out).eval()
    bparts = find_parts(back)
    assert len(bparts.layers) == 6 and bparts.text_config.num_hidden_layers == 6
    assert back.config.interlace_kept_layers == kept

    # parameters of kept layers are bit-identical to the original model's
    for pos, orig in enumerate(kept):
        got = bparts.layers[pos].state_dict()
        assert got.keys() == before[orig].keys()
        for name, t in before[orig].items():
            assert torch.equal(got[name], t), (pos, orig, name)

    # reloaded logits == in-memory pruned logits
    assert torch.equal(logits(back, batch), want)

    # greedy generation: KV cache == no cache, in memory and reloaded (left padding for generation)
    gen_batch = sample_batch(proc, n=2, images=images, side="left")
    for m in (model, back):
        assert torch.equal(greedy(m, gen_batch, use_cache=True), greedy(m, gen_batch, use_cache=False))


def test_layer_types_and_sliding_window_follow_the_layers(tmp_path: Path) -> None:
    model, tok = tiny("qwen2")
    assert model.config.layer_types == ["full_attention"] * 4 + ["sliding_attention"] * 4
    prune_model(model, plan_dropping(8, [1, 2, 5]))
    want = ["full_attention"] * 2 + ["sliding_attention"] * 3
    assert model.config.layer_types == want
    assert model.config.max_window_layers == 2
    assert [layer.self_attn.layer_type for layer in model.model.layers] == want
    save_model(model, tok, tmp_path / "m")
    cfg = AutoConfig.from_pretrained(tmp_path / "m")
    assert cfg.layer_types == want and cfg.num_hidden_layers == 5


def _injection_points(model) -> list[int]:
    """Original indices of the layers after which DeepStack features were added, found by comparing
    each layer's output with the next layer's input during a forward pass with images."""
    parts = find_parts(model)
    kept = getattr(model.config, "interlace_kept_layers", None) or list(range(len(parts.layers)))
    ins: dict[int, torch.Tensor] = {}
    outs: dict[int, torch.Tensor] = {}
    hs = []
    for p, layer in enumerate(parts.layers):
        hs.append(
            layer.register_forward_pre_hook(
                lambda m, a, kw, p=p: ins.__setitem__(p, a[0] if a else kw["hidden_states"]), with_kwargs=True
            )
        )
        hs.append(layer.register_forward_hook(lambda m, a, o, p=p: outs.__setitem__(p, o)))
    _, proc = tiny("qwen3_vl")
    try:
        logits(model, sample_batch(proc, images=True))
    finally:
        for h in hs:
            h.remove()
    return [kept[p] for p in range(len(parts.layers) - 1) if not torch.equal(outs[p], ins[p + 1])]


def test_deepstack_protect_keeps_injection_after_same_original_layers() -> None:
    model, _ = tiny("qwen3_vl")
    assert find_parts(model).deepstack_layers == [0, 1, 2]
    assert _injection_points(model) == [0, 1, 2]
    prune_model(model, plan_dropping(8, [3, 5]), deepstack_policy="protect")
    assert _injection_points(model) == [0, 1, 2]
    assert model.config.interlace_deepstack_policy == "protect"


def test_deepstack_position_moves_injections() -> None:
    model, _ = tiny("qwen3_vl")
    prune_model(model, plan_dropping(8, [1, 5]), deepstack_policy="position")
    # positions 0, 1, 2 now hold original layers 0, 2, 3
    assert _injection_points(model) == [0, 2, 3]


def test_deepstack_protect_rejects_plan_dropping_receivers() -> None:
    model, _ = tiny("qwen3_vl")
    with pytest.raises(InterlaceError, match=r"DeepStack.*protect"):
        prune_model(model, plan_dropping(8, [1, 5]), deepstack_policy="protect")
    assert len(find_parts(model).layers) == 8  # untouched


def test_plan_for_other_layer_count_rejected() -> None:
    model, _ = tiny("llama")
    with pytest.raises(InterlaceError, match="12-layer"):
        prune_model(model, plan_dropping(12, [3]))
    with pytest.raises(InterlaceError, match="deepstack policy"):
        prune_model(model, plan_dropping(8, [3]), deepstack_policy="keep")


def test_prune_twice_composes_provenance() -> None:
    model, _ = tiny("mistral")
    prune_model(model, plan_dropping(8, [2]))
    prune_model(model, plan_dropping(7, [0, 5]))
    assert model.config.interlace_kept_layers == [1, 3, 4, 5, 7]
    assert model.config.interlace_num_layers_before == 8


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tok = tiny("llama")
    prune_model(model, plan_dropping(8, [4]))
    out = tmp_path / "out"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tok, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(model, tok, out)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (out / "x").parent.mkdir()
    (out / "x").write_text("keep me")
    with pytest.raises(InterlaceError, match="not empty"):
        save_model(model, tok, out)
    assert (out / "x").read_text() == "keep me"
    save_model(model, tok, out, overwrite=True)
    assert (out / "config.json").is_file() and not (out / "x").exists()
