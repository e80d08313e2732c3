"""Sample -> model inputs (chat template, assistant-only labels) and batches (padding or packing).

Labels
    The conversation is rendered once with the model's own chat template. Each turn's text is then
    located in the rendering, in order (templates render message content verbatim; loaders strip it),
    and every assistant turn's span is extended over the end-of-turn token that the template puts
    right after it (`<|im_end|>`, `<|eot_id|>`, `</s>`, ...), so the model learns to stop. Tokens are
    labelled when their character offsets overlap an assistant span; everything else (system and user
    turns, role headers, image tokens, padding) is -100. One rendering, one tokenisation: no
    assumption that the tokenisation of a prefix is a prefix of the tokenisation.

Images (Qwen2-VL / Qwen2.5-VL / Qwen3-VL, LLaVA)
    The processor expands each image placeholder into as many image tokens as the image needs. Labels
    are computed on the unexpanded text and carried over by aligning the two token sequences: they are
    identical except that runs of the image token are longer. pixel_values / image_grid_thw (or the
    processor's other image outputs) are passed through untouched.

Truncation
    To max_length tokens from the right. A truncation that would cut into image tokens is an
    EncodeError (the image features could no longer be matched to tokens).

Packing (`collate(..., packing=True)`)
    Examples are packed greedily, in order, into rows of at most max_length tokens (one row if
    None), every per-token tensor concatenated, position_ids restarting at 0 for each sample, and NO
    attention_mask. Without an attention mask and without a KV cache (call the model with
    use_cache=False, as training does anyway), transformers detects the packed sequences from the
    position_ids: sdpa/eager get a block-diagonal causal mask (per row), so a token never attends to
    another sample of its pack; flash-attention-2 runs them as variable-length sequences only in a
    batch of ONE row (its varlen path needs batch size 1; with several rows it would attend across
    samples), so callers on flash-attention-2 pass max_length=None (the finetune loop does). With
    use_cache=True the mask is plain causal and samples would see each other.

    Batches with images pack when the caller passes the family's per-sample `positions`
    (interlace.models.packing.sample_positions(model config)): each sample gets the positions the
    model gives it alone. Qwen2-VL / Qwen2.5-VL / Qwen3-VL: position_ids of shape [4, rows, L], row 0
    the restarting text positions (what the Qwen-VL text models use for the mask and flash varlen),
    rows 1-3 each sample's 3-D M-RoPE positions from the model class's own get_rope_index on the
    sample alone; LLaVA: 1-D positions. pixel_values / image_grid_thw are concatenated in sample
    order, labels are the samples' own. Without `positions` (a family without the support) a batch
    with images is padded, and a warning says so once. tests/data/test_encode.py checks packed
    logits and loss against the samples run alone, on CPU, for text, Qwen3-VL, Qwen2.5-VL and LLaVA.

`padding_share(batch)`: padding positions / all positions of a collated batch (for benchmarks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from interlace.data.chat import is_multimodal_processor, messages_for, tokenizer_of
from interlace.data.sample import Sample, Turn
from interlace.data.stats import DataStats
from interlace.errors import InterlaceError

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
# Per-token tensors (padded / packed along the sequence); everything else in an encoded example is
# per-image (pixel_values, image_grid_thw, image_sizes, ...) and is concatenated along dim 0.
TOKEN_KEYS = ("input_ids", "labels", "attention_mask", "token_type_ids", "mm_token_type_ids", "position_ids")
_PAD_VALUES = {"input_ids": None, "labels": IGNORE_INDEX}
_warned_vlm_packing = False


class EncodeError(InterlaceError):
    """A sample that cannot be encoded for this model (e.g. images for a text-only tokenizer)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _special_strings(tokenizer: Any) -> list[str]:
    """Special token strings, longest first (so `<|im_end|>` wins over a shorter prefix)."""
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            specials.add(str(tok.content) if hasattr(tok, "content") else str(tok))
    return sorted((s for s in specials if s), key=len, reverse=True)


def assistant_spans(text: str, turns: Sequence[Turn], tokenizer: Any) -> list[tuple[int, int]]:
    """Character spans [start, end) of the assistant turns in the rendered `text`, each including the
    end-of-turn special token that directly follows it (after optional spaces)."""
    specials = _special_strings(tokenizer)
    spans = []
    cursor = 0
    for i, t in enumerate(turns):
        if not t.text:
            continue
        pos = text.find(t.text, cursor)
        if pos < 0:
            raise EncodeError("template", f"the chat template does not render turn {i} ({t.role}) verbatim")
        end = pos + len(t.text)
        if t.role == "assistant":
            j = end
            while j < len(text) and text[j] == " ":
                j += 1
            eot = next((s for s in specials if text.startswith(s, j)), None)
            if eot is not None:
                end = j + len(eot)
            spans.append((pos, end))
        cursor = end
    return spans


def encode_sample(sample: Sample, processor: Any, *, max_length: int) -> dict[str, Any]:
    """One Sample -> {input_ids, attention_mask, labels (1-D LongTensors), + image inputs for VLMs}.

    Raises EncodeError for a sample this model cannot take (images without an image processor, no
    chat template, image tokens cut by max_length).
    """
    import torch

    multimodal = is_multimodal_processor(processor)
    tokenizer = tokenizer_of(processor)
    if sample.images and not multimodal:
        raise EncodeError("images", f"{sample.source}: the sample has images but the model is text-only")
    if not getattr(processor, "chat_template", None) and not getattr(tokenizer, "chat_template", None):
        raise EncodeError("template", "the tokenizer/processor has no chat template")
    messages = messages_for(sample, multimodal=multimodal)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    spans = assistant_spans(text, sample.turns, tokenizer)

    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [
        tid if any(a < e and b > s for s, e in spans) else IGNORE_INDEX
        for tid, (a, b) in zip(ids, enc["offset_mapping"], strict=True)
    ]

    extra: dict[str, Any] = {}
    if multimodal:
        out = processor(
            text=[text], images=list(sample.images) or None, add_special_tokens=False, return_tensors="pt"
        )
        full = out["input_ids"][0].tolist()
        labels = _align_labels(ids, labels, full, _image_token_id(processor))
        n = len(full)
        for k, v in out.items():
            if k in ("input_ids", "attention_mask"):
                continue
            if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[0] == 1 and v.shape[1] == n:
                extra[k] = v[0]  # per-token extras (e.g. mm_token_type_ids)
            else:
                extra[k] = v
        ids = full

    if len(ids) > max_length:
        if multimodal and sample.images:
            image_id = _image_token_id(processor)
            if image_id in ids[max_length:]:
                raise EncodeError(
                    "too_long", f"{sample.source}: max_length={max_length} would cut the image tokens"
                )
        ids, labels = ids[:max_length], labels[:max_length]
        extra = {k: (v[:max_length] if k in TOKEN_KEYS else v) for k, v in extra.items()}
    result = {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "attention_mask": torch.ones(len(ids), dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
    }
    result.update(extra)
    return result


def _image_token_id(processor: Any) -> int:
    tid = getattr(processor, "image_token_id", None)
    if tid is None:
        tid = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return int(tid)


def _align_labels(plain: list[int], labels: list[int], expanded: list[int], image_id: int) -> list[int]:
    """Carry labels from the unexpanded token ids to the processor's ids (image runs expanded)."""
    out: list[int] = []
    i = j = 0
    while i < len(plain) and j < len(expanded):
        if plain[i] == image_id and expanded[j] == image_id:
            while i < len(plain) and plain[i] == image_id:
                i += 1
            while j < len(expanded) and expanded[j] == image_id:
                out.append(IGNORE_INDEX)
                j += 1
        elif plain[i] == expanded[j]:
            out.append(labels[i])
            i += 1
            j += 1
        else:
            break
    if i != len(plain) or j != len(expanded):
        raise EncodeError("align", "the processor's tokens differ from the tokenizer's beyond image tokens")
    return out


def encode_samples(
    samples: Iterable[Sample], processor: Any, *, max_length: int, stats: DataStats | None = None
) -> Iterator[dict[str, Any]]:
    """encode_sample over a stream; samples that cannot be encoded, or that keep no labelled token
    after truncation, are skipped and counted in `stats` (`encode_<reason>`, `no_label_tokens`)."""
    for s in samples:
        try:
            ex = encode_sample(s, processor, max_length=max_length)
        except EncodeError as err:
            if stats is not None:
                stats.skip(f"encode_{err.reason}")
            log.debug("skipped %s: %s", s.source, err)
            continue
        if not bool((ex["labels"] != IGNORE_INDEX).any()):
            if stats is not None:
                stats.skip("no_label_tokens")
            continue
        yield ex


class SamplePositions(Protocol):
    """Position ids of one encoded example as its model computes them for the example alone: [n]
    (1-D rope) or [3, n] (Qwen-VL's M-RoPE). interlace.models.packing.sample_positions(config)
    gives the one of a model family that packs batches with images."""

    def __call__(self, example: Mapping[str, Any]) -> torch.Tensor: ...


class Batch(dict[str, Any]):
    """collate's batch: the model's inputs (and labels) as a plain mapping, so `model(**batch)` works,
    plus `real_tokens`, the number of the examples' own tokens in it (the rest is padding), which is
    not a model input."""

    real_tokens: int


def collate(
    examples: Sequence[dict[str, Any]],
    pad_token_id: int,
    *,
    packing: bool = False,
    max_length: int | None = None,
    padding_side: str = "right",
    positions: SamplePositions | None = None,
) -> Batch:
    """A batch from encoded examples (1-D per-token tensors): the one collator of training,
    perplexity and calibration.

    packing=False: padded [B, L] input_ids (pad_token_id), labels (-100), attention_mask (0), other
    per-token tensors padded with 0, on the right (or the left: padding_side="left"); per-image
    tensors concatenated along dim 0.
    packing=True: examples packed in order into rows of at most `max_length` tokens (one row if
    None), with every per-token tensor (input_ids, labels, mm_token_type_ids, ...) concatenated,
    position_ids restarting per sample, and no attention_mask (see the module docstring). Rows are
    right-padded; the padding is its own segment with labels -100. A batch with images packs only
    with the model family's per-sample `positions` (interlace.models.packing.sample_positions): then
    position_ids are [4, rows, L] for M-RoPE (row 0 the restarting text positions that the masks
    follow, rows 1-3 each sample's own M-RoPE positions) or [rows, L] for 1-D rope, and the image
    tensors are concatenated in sample order. Without `positions` it is padded (logged once).
    """
    if not examples:
        raise ValueError("collate() needs at least one example")
    has_images = any(k not in TOKEN_KEYS for ex in examples for k in ex)
    if packing and has_images and positions is None:
        global _warned_vlm_packing
        if not _warned_vlm_packing:
            log.warning(
                "packing: this model's family has no per-sample positions for batches with images "
                "(interlace.models.packing packs Qwen2-VL, Qwen2.5-VL, Qwen3-VL and LLaVA); "
                "they are padded instead"
            )
            _warned_vlm_packing = True
        packing = False
    if packing:
        return _pack(examples, pad_token_id, max_length, positions if has_images else None)
    return _pad(examples, pad_token_id, padding_side)


def padding_share(batch: Mapping[str, Any]) -> float:
    """The share of a collated batch's token positions that are padding: padding tokens / all
    positions (rows x length). From `Batch.real_tokens` (collate's output, padded or packed), else
    from the attention_mask of a padded batch."""
    n = int(batch["input_ids"].numel())
    real = getattr(batch, "real_tokens", None)
    if real is None:
        if "attention_mask" not in batch:
            raise ValueError(
                "padding_share: a packed batch that is not collate's own output (no real_tokens)"
            )
        real = int(batch["attention_mask"].sum())
    return (n - int(real)) / n if n else 0.0


def _image_inputs(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-image tensors (pixel_values, image_grid_thw, ...) concatenated along dim 0, in sample order."""
    import torch

    out: dict[str, Any] = {}
    for k in dict.fromkeys(k for ex in examples for k in ex if k not in TOKEN_KEYS):
        parts = [ex[k] for ex in examples if k in ex]
        out[k] = torch.cat(parts, dim=0) if isinstance(parts[0], torch.Tensor) else parts
    return out


def _pad_value(key: str, pad_token_id: int) -> int:
    value = _PAD_VALUES.get(key, 0)
    return pad_token_id if value is None else value


def _pad(examples: Sequence[dict[str, Any]], pad_token_id: int, padding_side: str = "right") -> Batch:
    import torch

    length = max(int(ex["input_ids"].shape[0]) for ex in examples)
    batch = Batch()
    token_keys = [k for k in TOKEN_KEYS if any(k in ex for ex in examples)]
    for k in token_keys:
        value = _pad_value(k, pad_token_id)
        rows = []
        for ex in examples:
            t = ex[k] if k in ex else torch.zeros_like(ex["input_ids"])
            pad = torch.full((length - t.shape[0], *t.shape[1:]), value, dtype=t.dtype)
            rows.append(torch.cat([t, pad] if padding_side == "right" else [pad, t]))
        batch[k] = torch.stack(rows)
    batch.update(_image_inputs(examples))
    batch.real_tokens = sum(int(ex["input_ids"].shape[0]) for ex in examples)
    return batch


def _pack(
    examples: Sequence[dict[str, Any]],
    pad_token_id: int,
    max_length: int | None,
    positions: SamplePositions | None,
) -> Batch:
    import torch

    rows: list[list[dict[str, Any]]] = [[]]
    used = 0
    for ex in examples:
        n = int(ex["input_ids"].shape[0])
        if rows[-1] and max_length is not None and used + n > max_length:
            rows.append([])
            used = 0
        rows[-1].append(ex)
        used += n
    length = max(sum(int(ex["input_ids"].shape[0]) for ex in row) for row in rows)
    token_keys = [
        k
        for k in TOKEN_KEYS
        if k not in ("attention_mask", "position_ids") and any(k in ex for ex in examples)
    ]
    batch = Batch()
    for k in token_keys:
        value = _pad_value(k, pad_token_id)
        packed = []
        for row in rows:
            r = torch.cat([ex[k] if k in ex else torch.zeros_like(ex["input_ids"]) for ex in row])
            packed.append(torch.cat([r, torch.full((length - r.shape[0],), value, dtype=r.dtype)]))
        batch[k] = torch.stack(packed)
    # The text positions restart at 0 for every sample and for the padding: the packed-sequence
    # masks (and flash-attention's varlen) cut the rows where they do not go up by one.
    text = []
    for row in rows:
        r = torch.cat([torch.arange(int(ex["input_ids"].shape[0])) for ex in row])
        text.append(torch.cat([r, torch.arange(length - r.shape[0])]))
    position_ids = torch.stack(text)
    if positions is not None:
        own = []
        for row in rows:
            parts = [_sample_positions(positions, ex) for ex in row]
            pad = length - sum(int(p.shape[-1]) for p in parts)
            parts.append(torch.arange(pad).expand(*parts[0].shape[:-1], pad))
            own.append(torch.cat(parts, dim=-1))
        if own[0].dim() == 2:  # M-RoPE: [text, temporal, height, width] x rows x length
            position_ids = torch.cat([position_ids[None], torch.stack(own, dim=1)], dim=0)
        else:
            position_ids = torch.stack(own)
    batch["position_ids"] = position_ids
    batch.update(_image_inputs(examples))
    batch.real_tokens = sum(int(ex["input_ids"].shape[0]) for ex in examples)
    return batch


def _sample_positions(positions: SamplePositions, example: dict[str, Any]) -> torch.Tensor:
    import torch

    p = positions(example).to(torch.long)
    n = int(example["input_ids"].shape[0])
    if p.shape[-1] != n or p.dim() not in (1, 2):
        raise ValueError(f"per-sample positions of shape {tuple(p.shape)} for an example of {n} tokens")
    return p
