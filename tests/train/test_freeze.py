"""Freezing: only the plan's finetune layers (at their new positions) train; backward stops below them."""

from __future__ import annotations

import pytest
import torch

from interlace.errors import InterlaceError
from interlace.models.load import find_parts
from interlace.stages.finetune.freeze import apply_freezing, enable_checkpointing, finetune_positions
from interlace.stages.prune import prune_model
from tests.fixtures.tiny import tiny
from tests.train.conftest import hand_plan


def _pruned(kind: str):
    model, proc = tiny(kind)
    prune_model(model, hand_plan(), deepstack_policy="position")
    return model, proc


def _batch(tok, n: int = 2) -> dict[str, torch.Tensor]:
    enc = tok(["the cat sat on the mat", "a dog ran"] [:n], padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_positions_follow_surgery() -> None:
    # kept layers [0, 1, 3, 4, 6, 7]: original 1 -> 1, original 4 -> 3
    assert finetune_positions(hand_plan()) == [1, 3]


@pytest.mark.parametrize("kind", ["llama", "qwen3_vl"])
def test_only_finetune_layers_train(kind: str) -> None:
    model, _ = _pruned(kind)
    summary = apply_freezing(model, hand_plan())
    parts = find_parts(model)
    assert summary.positions == [1, 3]
    for pos, layer in enumerate(parts.layers):
        flags = {p.requires_grad for p in layer.parameters()}
        assert flags == ({True} if pos in (1, 3) else {False}), pos
    frozen_parts = [parts.embed_tokens, parts.norm, parts.lm_head, parts.vision, parts.projector]
    for part in frozen_parts:
        if part is not None:
            assert not any(p.requires_grad for p in part.parameters())
    expected = sum(p.numel() for i in (1, 3) for p in parts.layers[i].parameters())
    assert summary.trainable_params == expected
    assert all(".layers.1." in n or ".layers.3." in n for n in summary.trainable_names)


def test_backward_stops_below_lowest_trainable_layer() -> None:
    model, tok = _pruned("llama")
    summary = apply_freezing(model, hand_plan())
    enable_checkpointing(model, summary.lowest_position)
    model.train()
    layers = find_parts(model).layers
    seen: dict[str, bool] = {}
    backward_calls: list[int] = []

    def out_hook(i: int):
        def hook(_m, _args, out):
            hs = out[0] if isinstance(out, tuple) else out
            seen[f"out{i}"] = hs.requires_grad

        return hook

    def in_hook(_m, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        seen["in1"] = hs.requires_grad

    layers[0].register_forward_hook(out_hook(0))
    layers[1].register_forward_pre_hook(in_hook, with_kwargs=True)
    layers[1].register_forward_hook(out_hook(1))
    layers[0].register_full_backward_hook(lambda *a: backward_calls.append(0))
    emb_out: list[torch.Tensor] = []
    find_parts(model).embed_tokens.register_forward_hook(lambda _m, _a, o: emb_out.append(o))

    out = model(**_batch(tok), use_cache=False)
    out.logits.float().sum().backward()

    assert seen == {"out0": False, "in1": False, "out1": True}
    assert not emb_out[0].requires_grad  # no enable_input_require_grads: the graph starts at layer 1
    assert backward_calls == []
    grads = {n: p.grad is not None for n, p in model.named_parameters()}
    assert {n for n, g in grads.items() if g} == set(summary.trainable_names)
    # checkpointing is on for the layers that take part in backward, off below
    assert [bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers] == [
        False, True, True, True, True, True,
    ]


def test_checkpointed_grads_match_plain_grads() -> None:
    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model, tok = _pruned("llama")
        summary = apply_freezing(model, hand_plan())
        if checkpointing:
            enable_checkpointing(model, summary.lowest_position)
        model.train()
        model(**_batch(tok), use_cache=False).logits.float().pow(2).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    a, b = grads(False), grads(True)
    assert a.keys() == b.keys() and a
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-6)


def test_trainable_lm_head_is_untied_from_embeddings() -> None:
    model, tok = _pruned("qwen3")  # tied embeddings
    parts = find_parts(model)
    assert parts.lm_head.weight is parts.embed_tokens.weight
    before = parts.embed_tokens.weight.detach().clone()
    summary = apply_freezing(model, hand_plan(), freeze_lm_head=False)
    assert summary.untied_lm_head and summary.lm_head_trainable
    assert parts.lm_head.weight is not parts.embed_tokens.weight
    assert parts.lm_head.weight.requires_grad and not parts.embed_tokens.weight.requires_grad
    assert model.config.tie_word_embeddings is False
    torch.testing.assert_close(parts.lm_head.weight.detach(), before, rtol=0, atol=0)
    model.train()
    model(**_batch(tok), use_cache=False).logits.sum().backward()
    assert parts.embed_tokens.weight.grad is None and parts.lm_head.weight.grad is not None


def test_untied_head_stays_frozen_by_default() -> None:
    model, _ = _pruned("llama")  # untied
    summary = apply_freezing(model, hand_plan())
    assert not summary.lm_head_trainable
    assert not find_parts(model).lm_head.weight.requires_grad


def test_unpruned_model_is_rejected() -> None:
    model, _ = tiny("llama")
    with pytest.raises(InterlaceError, match="8 decoder layers but the plan keeps 6"):
        apply_freezing(model, hand_plan())

