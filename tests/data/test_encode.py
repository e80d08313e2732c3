"""encode_sample / collate on real tokenizers and processors built offline (tests/fixtures/tiny.py)."""

from __future__ import annotations

import pytest
import torch

from interlace.data import DataStats
from interlace.data.encode import IGNORE_INDEX, EncodeError, collate, encode_sample, encode_samples
from interlace.data.sample import Sample, Turn
from tests.fixtures import tiny


def _labelled(tok, ex) -> list[tuple[str, bool]]:
    toks = tok.convert_ids_to_tokens(ex["input_ids"].tolist())
    return [(t, lab != IGNORE_INDEX) for t, lab in zip(toks, ex["labels"].tolist(), strict=True)]


def test_hand_checked_labels_text_tokenizer() -> None:
    """Every token of a 2-turn ChatML conversation, checked by hand: only the answers and their
    <|im_end|> are labelled; the user's "yes" (same text as the first answer) is not."""
    tok = tiny.tiny_tokenizer()
    sample = Sample(
        turns=[
            Turn("system", "Be brief."),
            Turn("user", "Say yes"),
            Turn("assistant", "yes"),
            Turn("user", "Again?"),
            Turn("assistant", "yes, yes"),
        ]
    )
    ex = encode_sample(sample, tok, max_length=512)
    header_user = [("<|im_start|>", False), ("u", False), ("s", False), ("er", False), ("Ċ", False)]
    header_asst = [("<|im_start|>", False), ("as", False), ("s", False), ("i", False), ("s", False),
                   ("t", False), ("an", False), ("t", False), ("Ċ", False)]  # fmt: skip
    system = [("<|im_start|>", False), ("s", False), ("y", False), ("s", False), ("te", False), ("m", False),
              ("Ċ", False), ("B", False), ("e", False), ("Ġb", False), ("ri", False), ("e", False), ("f", False),
              (".", False), ("<|im_end|>", False), ("Ċ", False)]  # fmt: skip
    user1 = [("S", False), ("ay", False), ("Ġ", False), ("y", False), ("es", False), ("<|im_end|>", False), ("Ċ", False)]
    answer1 = [("y", True), ("es", True), ("<|im_end|>", True), ("Ċ", False)]
    user2 = [("A", False), ("g", False), ("a", False), ("in", False), ("?", False), ("<|im_end|>", False), ("Ċ", False)]
    answer2 = [("y", True), ("es", True), (",", True), ("Ġ", True), ("y", True), ("es", True), ("<|im_end|>", True),
               ("Ċ", False)]  # fmt: skip
    expected = [*system, *header_user, *user1, *header_asst, *answer1, *header_user, *user2, *header_asst, *answer2]
    assert _labelled(tok, ex) == expected
    assert tok.decode(ex["input_ids"][ex["labels"] != IGNORE_INDEX]) == "yes<|im_end|>yes, yes<|im_end|>"
    assert ex["attention_mask"].tolist() == [1] * len(expected)
    # labels are the input ids themselves where labelled (the model shifts them)
    keep = ex["labels"] != IGNORE_INDEX
    assert torch.equal(ex["labels"][keep], ex["input_ids"][keep])


def test_hand_checked_labels_qwen_vl_processor() -> None:
    """A 64x64 image becomes 4 <|image_pad|> tokens (grid 1x4x4, merge 2x2); none is labelled."""
    _, proc = tiny.tiny_qwen2_vl()
    sample = Sample(turns=[Turn("user", "Color?"), Turn("assistant", "Red.")], images=tiny.tiny_images(1))
    ex = encode_sample(sample, proc, max_length=512)
    expected = (
        [("<|im_start|>", False), ("u", False), ("s", False), ("er", False), ("Ċ", False), ("<|vision_start|>", False)]
        + [("<|image_pad|>", False)] * 4
        + [("<|vision_end|>", False), ("C", False), ("olor", False), ("?", False), ("<|im_end|>", False), ("Ċ", False),
           ("<|im_start|>", False), ("as", False), ("s", False), ("i", False), ("s", False), ("t", False), ("an", False),
           ("t", False), ("Ċ", False), ("Re", True), ("d", True), (".", True), ("<|im_end|>", True), ("Ċ", False)]
    )  # fmt: skip
    assert _labelled(proc.tokenizer, ex) == expected
    assert ex["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert ex["pixel_values"].shape[0] == 16  # 4x4 patches before the 2x2 merge


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl", "llava"])
def test_vlm_labels_and_image_inputs(kind: str) -> None:
    model, proc = tiny.tiny(kind)
    samples = tiny.tiny_samples(4)
    for s in samples:
        ex = encode_sample(s, proc, max_length=1024)
        answers = "".join(t.text + "<|im_end|>" for t in s.turns if t.role == "assistant")
        assert proc.tokenizer.decode(ex["input_ids"][ex["labels"] != IGNORE_INDEX]) == answers
        image_id = proc.tokenizer.convert_tokens_to_ids(proc.image_token)
        n_image_tokens = int((ex["input_ids"] == image_id).sum())
        assert (n_image_tokens > 0) == bool(s.images)
        assert bool((ex["labels"][ex["input_ids"] == image_id] == IGNORE_INDEX).all())
    batch = collate([encode_sample(s, proc, max_length=1024) for s in samples], proc.tokenizer.pad_token_id)
    with torch.no_grad():
        out = model(**batch)  # the batch is what the real model consumes
    assert torch.isfinite(out.loss)


def test_truncation_and_errors() -> None:
    tok = tiny.tiny_tokenizer()
    sample = Sample(turns=[Turn("user", "Tell me."), Turn("assistant", "A long answer with many words in it.")])
    full = encode_sample(sample, tok, max_length=512)
    cut = encode_sample(sample, tok, max_length=20)
    assert cut["input_ids"].shape[0] == 20
    assert torch.equal(cut["input_ids"], full["input_ids"][:20])
    assert torch.equal(cut["labels"], full["labels"][:20])
    with pytest.raises(EncodeError, match="text-only"):
        encode_sample(Sample(turns=sample.turns, images=tiny.tiny_images(1)), tok, max_length=64)
    _, proc = tiny.tiny_qwen2_vl()
    with pytest.raises(EncodeError, match="cut the image tokens"):
        encode_sample(Sample(turns=sample.turns, images=tiny.tiny_images(1)), proc, max_length=7)
    stats = DataStats()
    out = list(
        encode_samples(
            [sample, Sample(turns=sample.turns, images=tiny.tiny_images(1)), sample], tok, max_length=8, stats=stats
        )
    )
    # max_length=8 keeps only the user header: no labelled token left -> skipped; the image one is too
    assert out == [] and stats.skipped == {"no_label_tokens": 2, "encode_images": 1}


def test_collate_padding() -> None:
    tok = tiny.tiny_tokenizer()
    exs = [encode_sample(s, tok, max_length=512) for s in tiny.tiny_samples(3, images=False)]
    pad = tok.pad_token_id
    b = collate(exs, pad)
    n = max(e["input_ids"].shape[0] for e in exs)
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (3, n)
    for i, e in enumerate(exs):
        m = e["input_ids"].shape[0]
        assert torch.equal(b["input_ids"][i, :m], e["input_ids"])
        assert torch.equal(b["labels"][i, :m], e["labels"])
        assert b["attention_mask"][i].tolist() == [1] * m + [0] * (n - m)
        assert bool((b["input_ids"][i, m:] == pad).all()) and bool((b["labels"][i, m:] == IGNORE_INDEX).all())


def test_collate_left_padding() -> None:
    """padding_side="left" (calibration with a left-padding tokenizer): the same rows, pads in front."""
    tok = tiny.tiny_tokenizer()
    exs = [encode_sample(s, tok, max_length=512) for s in tiny.tiny_samples(3, images=False)]
    pad = tok.pad_token_id
    b = collate(exs, pad, padding_side="left")
    n = max(e["input_ids"].shape[0] for e in exs)
    assert len({e["input_ids"].shape[0] for e in exs}) > 1  # some row is padded
    for i, e in enumerate(exs):
        m = e["input_ids"].shape[0]
        assert torch.equal(b["input_ids"][i, n - m :], e["input_ids"])
        assert b["attention_mask"][i].tolist() == [0] * (n - m) + [1] * m
        assert bool((b["input_ids"][i, : n - m] == pad).all()) and bool((b["labels"][i, : n - m] == IGNORE_INDEX).all())


def test_collate_concatenates_image_inputs() -> None:
    _, proc = tiny.tiny_qwen2_vl()
    samples = tiny.tiny_samples(4)  # 1, 2, 0, 1 images
    exs = [encode_sample(s, proc, max_length=1024) for s in samples]
    b = collate(exs, proc.tokenizer.pad_token_id, packing=True)  # images: packing falls back to padding
    assert "attention_mask" in b and b["input_ids"].shape[0] == 4
    assert b["image_grid_thw"].shape[0] == sum(len(s.images) for s in samples)
    assert b["pixel_values"].shape[0] == sum(e["pixel_values"].shape[0] for e in exs if "pixel_values" in e)


def test_packing_rows_positions_and_labels() -> None:
    tok = tiny.tiny_tokenizer()
    exs = [encode_sample(s, tok, max_length=512) for s in tiny.tiny_samples(6, images=False)]
    lengths = [int(e["input_ids"].shape[0]) for e in exs]
    max_length = 2 * max(lengths)
    b = collate(exs, tok.pad_token_id, packing=True, max_length=max_length)
    assert set(b) == {"input_ids", "labels", "position_ids"}  # no attention_mask: packed-sequence masks
    # greedy, in order: a new row starts when the next sample would not fit
    groups: list[list[int]] = [[]]
    for k, n in enumerate(lengths):
        if groups[-1] and sum(lengths[i] for i in groups[-1]) + n > max_length:
            groups.append([])
        groups[-1].append(k)
    assert 1 < len(groups) < len(exs)
    width = max(sum(lengths[i] for i in g) for g in groups)
    assert b["input_ids"].shape == (len(groups), width) and width <= max_length
    for r, g in enumerate(groups):
        pos = 0
        for k in g:
            n = lengths[k]
            assert torch.equal(b["input_ids"][r, pos : pos + n], exs[k]["input_ids"])
            assert torch.equal(b["labels"][r, pos : pos + n], exs[k]["labels"])
            assert b["position_ids"][r, pos : pos + n].tolist() == list(range(n))
            pos += n
        assert bool((b["labels"][r, pos:] == IGNORE_INDEX).all())
        assert bool((b["input_ids"][r, pos:] == tok.pad_token_id).all())
        assert b["position_ids"][r, pos:].tolist() == list(range(width - pos))
    one_row = collate(exs, tok.pad_token_id, packing=True)
    assert one_row["input_ids"].shape == (1, sum(lengths))


def test_packed_attention_is_isolated_per_sample() -> None:
    """Packed logits equal the logits of each sample run alone: no cross-sample attention (sdpa, CPU).

    transformers builds the block-diagonal mask from the restarting position_ids only without an
    attention_mask and without a KV cache, so training must call the model with use_cache=False.
    """
    model, tok = tiny.tiny_llama()
    exs = [encode_sample(s, tok, max_length=512) for s in tiny.tiny_samples(3, images=False)]
    packed = collate(exs, tok.pad_token_id, packing=True)
    with torch.no_grad():
        logits = model(**_inputs(packed), use_cache=False).logits[0]
        pos = 0
        for e in exs:
            n = e["input_ids"].shape[0]
            alone = model(input_ids=e["input_ids"][None]).logits[0]
            torch.testing.assert_close(logits[pos : pos + n], alone, rtol=1e-4, atol=1e-4)
            pos += n
        # and the packed loss equals the token-weighted mean of the per-sample losses
        loss = model(**packed, use_cache=False).loss
        total = sum(model(input_ids=e["input_ids"][None], labels=e["labels"][None]).loss * _n_targets(e) for e in exs)
        torch.testing.assert_close(loss, total / sum(_n_targets(e) for e in exs), rtol=1e-4, atol=1e-4)


def _inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}


def _n_targets(ex: dict) -> int:
    return int((ex["labels"][1:] != IGNORE_INDEX).sum())
