"""encode_sample / collate on real tokenizers and processors built offline (tests/fixtures/tiny.py)."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch

from interlace.data import DataStats, encode
from interlace.data.encode import (
    IGNORE_INDEX,
    EncodeError,
    collate,
    encode_sample,
    encode_samples,
    padding_share,
)
from interlace.data.sample import Sample, Turn
from interlace.models.packing import MRopePositions, sample_positions
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


def test_collate_concatenates_image_inputs(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images without per-sample positions (a family that cannot pack them): padded, logged once."""
    monkeypatch.setattr(encode, "_warned_vlm_packing", False)
    _, proc = tiny.tiny_qwen2_vl()
    samples = tiny.tiny_samples(4)  # 1, 2, 0, 1 images
    exs = [encode_sample(s, proc, max_length=1024) for s in samples]
    with caplog.at_level(logging.WARNING, logger="interlace.data.encode"):
        b = collate(exs, proc.tokenizer.pad_token_id, packing=True)
        collate(exs, proc.tokenizer.pad_token_id, packing=True)
    assert "attention_mask" in b and b["input_ids"].shape[0] == 4
    assert b["image_grid_thw"].shape[0] == sum(len(s.images) for s in samples)
    assert b["pixel_values"].shape[0] == sum(e["pixel_values"].shape[0] for e in exs if "pixel_values" in e)
    assert [r.message for r in caplog.records if "packing" in r.message] == [
        "packing: this model's family has no per-sample positions for batches with images "
        "(interlace.models.packing packs Qwen2-VL, Qwen2.5-VL, Qwen3-VL and LLaVA); they are padded instead"
    ]
    model, _ = tiny.tiny_llama()
    assert sample_positions(model.config) is None  # no family support: collate gets None and pads


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


# ---------------------------------------------------------------------------- packing with images


def _vlm_examples(proc) -> list[dict]:
    """4 samples: 1, 2, 0 and 1 images of different sizes (grids 4x4, 4x6 + 6x4, -, 4x4 or 6x6), 47 to 77 tokens."""
    return [encode_sample(s, proc, max_length=1024) for s in tiny.tiny_samples(4)]


def _alone(model, ex: dict, **kw):
    """The model on one example alone, unpacked, as a batch of one."""
    per_token = {"input_ids", "attention_mask", "mm_token_type_ids"}
    return model(**{k: (v[None] if k in per_token else v) for k, v in ex.items() if k != "labels"}, **kw)


def _spans(exs: list[dict], max_length: int | None) -> list[tuple[int, int, int]]:
    """(row, start, length) of each example in a packed batch (greedy, in order)."""
    out, row, used = [], 0, 0
    for e in exs:
        n = int(e["input_ids"].shape[0])
        if used and max_length is not None and used + n > max_length:
            row, used = row + 1, 0
        out.append((row, used, n))
        used += n
    return out


def _worst_logit_error(model, exs: list[dict], batch: dict, spans: list[tuple[int, int, int]]) -> float:
    with torch.no_grad():
        logits = model(**_inputs(batch), use_cache=False).logits
        return max(
            float((logits[r, s : s + n] - _alone(model, e).logits[0]).abs().max())
            for e, (r, s, n) in zip(exs, spans, strict=True)
        )


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen2_5_vl", "llava"])
@pytest.mark.parametrize("max_length", [None, 140])
def test_packed_batch_with_images_equals_its_samples_alone(kind: str, max_length: int | None) -> None:
    """A packed batch with images (samples of different lengths and image sizes, one row or two):
    each sample's logits equal its logits alone, unpacked, and the packed loss equals the sum of
    the per-sample losses (the packed loss is their token mean); labels and image inputs are the
    samples' own, in order. sdpa on CPU, use_cache=False as training."""
    model, proc = tiny.tiny(kind)
    exs = _vlm_examples(proc)
    assert len({int(e["input_ids"].shape[0]) for e in exs}) >= 3  # different lengths
    packed = collate(exs, proc.tokenizer.pad_token_id, packing=True, max_length=max_length,
                     positions=sample_positions(model.config))  # fmt: skip
    spans = _spans(exs, max_length)
    rows = spans[-1][0] + 1
    assert (rows == 1) == (max_length is None)
    assert "attention_mask" not in packed
    assert packed["position_ids"].shape == ((rows, packed["input_ids"].shape[1]) if kind == "llava"
                                            else (4, rows, packed["input_ids"].shape[1]))  # fmt: skip
    for k in ("pixel_values", "image_grid_thw"):
        if k in exs[0]:
            assert torch.equal(packed[k], torch.cat([e[k] for e in exs if k in e]))
    for e, (r, s, n) in zip(exs, spans, strict=True):
        assert torch.equal(packed["labels"][r, s : s + n], e["labels"])
        assert torch.equal(packed["input_ids"][r, s : s + n], e["input_ids"])
    assert _worst_logit_error(model, exs, packed, spans) < 1e-4
    with torch.no_grad():
        loss = model(**packed, use_cache=False).loss
        total = sum(_alone(model, e, labels=e["labels"][None]).loss * _n_targets(e) for e in exs)
    torch.testing.assert_close(loss * sum(_n_targets(e) for e in exs), total, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["qwen3_vl", "qwen2_5_vl"])
def test_packed_mrope_is_each_samples_own(kind: str) -> None:
    """Rows 1-3 of the packed position_ids are, per sample, what the model's own get_rope_index
    gives the sample alone; row 0 restarts at 0 for every sample. And the logit check above is
    sharp: one running position for all samples (no per-sample M-RoPE), text positions only, or a
    row 0 that does not restart (samples see each other) each move the logits far off."""
    model, proc = tiny.tiny(kind)
    exs = _vlm_examples(proc)
    packed = collate(exs, proc.tokenizer.pad_token_id, packing=True, positions=sample_positions(model.config))
    spans = _spans(exs, None)
    pos = packed["position_ids"]
    for e, (_, s, n) in zip(exs, spans, strict=True):
        own, _ = model.model.get_rope_index(
            e["input_ids"][None],
            mm_token_type_ids=e["mm_token_type_ids"][None],
            image_grid_thw=e.get("image_grid_thw"),
        )
        assert torch.equal(pos[1:, 0, s : s + n], own[:, 0])
        assert pos[0, 0, s : s + n].tolist() == list(range(n))
    assert not torch.equal(pos[1], pos[0])  # the images' height/width positions are not the text ones
    width = pos.shape[-1]
    running = torch.arange(width).expand(4, 1, width)
    no_mrope = {**packed, "position_ids": torch.cat([pos[:1], running[1:]])}  # one running position
    text_only = {**packed, "position_ids": pos[0]}  # text packing's positions, [rows, L]
    no_restart = {**packed, "position_ids": torch.cat([running[:1], pos[1:]])}  # one sequence for the mask
    for wrong in (no_mrope, text_only, no_restart):
        assert _worst_logit_error(model, exs, wrong, spans) > 1e-2


def test_mrope_positions_travel_to_dataloader_workers() -> None:
    """sample_positions' object holds only the config (no weights): it pickles and gives the same."""
    model, proc = tiny.tiny_qwen3_vl()
    positions = sample_positions(model.config)
    assert isinstance(positions, MRopePositions)
    ex = _vlm_examples(proc)[1]
    assert torch.equal(pickle.loads(pickle.dumps(positions))(ex), positions(ex))


def test_padding_share() -> None:
    tok = tiny.tiny_tokenizer()
    exs = [encode_sample(s, tok, max_length=512) for s in tiny.tiny_samples(3, images=False)]
    lengths = [int(e["input_ids"].shape[0]) for e in exs]
    padded = collate(exs, tok.pad_token_id)
    share = 1 - sum(lengths) / (3 * max(lengths))
    assert share > 0
    assert padding_share(padded) == pytest.approx(share)
    assert padding_share(dict(padded)) == pytest.approx(share)  # a plain dict: from its attention_mask
    assert padding_share(collate(exs, tok.pad_token_id, packing=True)) == 0.0  # one row, no padding
    two_rows = collate(exs, tok.pad_token_id, packing=True, max_length=lengths[0] + lengths[1])
    assert two_rows["input_ids"].shape == (2, lengths[0] + lengths[1])
    assert padding_share(two_rows) == pytest.approx(1 - sum(lengths) / two_rows["input_ids"].numel())
    with pytest.raises(ValueError, match="not collate's own output"):
        padding_share(dict(two_rows))
