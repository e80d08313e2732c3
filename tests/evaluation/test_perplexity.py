"""Perplexity equals a straightforward unbatched reference on the same (assistant-only) tokens."""

from __future__ import annotations

import math

import pytest
import torch

from interlace.data.encode import encode_sample
from interlace.data.sample import Sample, Turn
from interlace.errors import InterlaceError
from interlace.stages.evaluate import perplexity
from tests.fixtures.tiny import tiny, tiny_samples


@torch.no_grad()
def reference(model, processor, samples, max_length: int) -> float:  # type: ignore[no-untyped-def]
    """One sample at a time, no padding: sum of -log p(token) over label positions, float64."""
    total, count = 0.0, 0
    for s in samples:
        ex = encode_sample(s, processor, max_length=max_length)
        labels = ex.pop("labels")
        inputs = {k: (v[None] if k in ("input_ids", "attention_mask") else v) for k, v in ex.items()}
        if "mm_token_type_ids" in inputs:
            inputs["mm_token_type_ids"] = inputs["mm_token_type_ids"][None]
        logp = torch.log_softmax(model(**inputs).logits[0].double(), dim=-1)
        for pos in range(1, labels.shape[0]):
            if labels[pos] != -100:
                total -= float(logp[pos - 1, labels[pos]])
                count += 1
    return math.exp(total / count)


@pytest.mark.parametrize(("kind", "images"), [("llama", False), ("qwen2_vl", True)])
def test_matches_unbatched_reference(kind: str, images: bool) -> None:
    model, proc = tiny(kind)
    samples = tiny_samples(5, images=images)
    ref = reference(model, proc, samples, max_length=512)
    for bs in (1, 3):
        got = perplexity(model, proc, samples, batch_size=bs, max_length=512)
        assert got == pytest.approx(ref, rel=1e-4)
    assert 1.0 < ref < 10 * len(proc.tokenizer if images else proc)


def test_only_assistant_tokens_count() -> None:
    """Changing the user turn's tokens changes the context but must not add targets: with a
    one-token assistant answer, perplexity is exp(NLL of that one token)."""
    model, tok = tiny("llama")
    s = Sample(turns=[Turn("user", "Hello there, how are you today?"), Turn("assistant", "Fine")])
    ex = encode_sample(s, tok, max_length=256)
    n_targets = int((ex["labels"] != -100).sum())
    assert n_targets < ex["input_ids"].shape[0] // 2
    assert perplexity(model, tok, [s], batch_size=1, max_length=256) == pytest.approx(
        reference(model, tok, [s], 256), rel=1e-5
    )


def test_no_assistant_tokens_is_an_error() -> None:
    model, tok = tiny("llama")
    with pytest.raises(InterlaceError, match="no sample has an assistant token"):
        perplexity(model, tok, [Sample(turns=[Turn("user", "only a question")])], batch_size=2, max_length=64)
