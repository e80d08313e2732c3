"""Calibration batches for the similarity analysis (method section 1).

As in the reference: the first user turn of each sample (system turns kept), its images, the chat
template with the generation prompt. Unlike the reference (batch size 1), samples are batched and
padded; the analysis masks padding with `attention_mask`, so the scores are the same.

Each sample is encoded on its own by the model's processor (so the processor expands image
placeholders exactly as at inference), then a batch is collated: token tensors are padded on the
tokenizer's padding side, image tensors (pixel_values, image_grid_thw, ...) are concatenated along
their first dimension in sample order, which is the order every supported model consumes them in.

Over-long samples: text is cut from the right to `max_length` tokens when the cut removes no image
placeholder; otherwise the sample is skipped (cutting image placeholders would break the model's
image-token count check) and counted in `CalibrationStats.skipped_too_long`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from interlace.data.chat import is_multimodal_processor, messages_for, tokenizer_of
from interlace.data.sample import Sample
from interlace.errors import InterlaceError

# Per-token tensors (shape [1, T]) that are padded; everything else is concatenated on dim 0.
_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


@dataclass
class CalibrationStats:
    samples: int = 0
    batches: int = 0
    tokens: int = 0
    images: int = 0
    truncated: int = 0
    skipped_too_long: int = 0


def to_messages(sample: Sample, *, multimodal: bool) -> list[dict[str, Any]]:
    """Chat messages of a sample's calibration view (system turns + first user turn)."""
    msgs = messages_for(sample.first_user_turn(), multimodal=multimodal)
    if not any(m["role"] == "user" for m in msgs):
        raise InterlaceError(f"calibration sample from {sample.source or 'input'} has no user turn")
    return msgs


def encode_prompt(sample: Sample, processor: Any, *, max_length: int) -> dict[str, Any] | None:
    """One sample -> tensors with a batch dimension of 1, or None when it must be skipped."""
    multimodal = is_multimodal_processor(processor)
    images = list(sample.images) if multimodal else []
    view_images = images[:]  # first_user_turn keeps all images
    msgs = to_messages(sample, multimodal=multimodal)
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    if multimodal:
        enc = processor(text=[text], images=view_images or None, return_tensors="pt")
    else:
        enc = processor(text, return_tensors="pt", add_special_tokens=False)
    enc = dict(enc)
    n = enc["input_ids"].shape[1]
    if n > max_length:
        image_ids = _image_token_ids(processor)
        tail = enc["input_ids"][0, max_length:]
        if view_images and any(int(t) in image_ids for t in tail.tolist()):
            return None
        for k in _TOKEN_KEYS:
            if k in enc:
                enc[k] = enc[k][:, :max_length]
        enc["_truncated"] = True
    return enc


def _image_token_ids(processor: Any) -> set[int]:
    ids = set()
    for attr in ("image_token_id", "video_token_id"):
        v = getattr(processor, attr, None)
        if isinstance(v, int):
            ids.add(v)
    tok = tokenizer_of(processor)
    for attr in ("image_token", "video_token"):
        t = getattr(processor, attr, None)
        if isinstance(t, str):
            tid = tok.convert_tokens_to_ids(t)
            if isinstance(tid, int):
                ids.add(tid)
    return ids


def _collate(encoded: list[dict[str, Any]], *, pad_token_id: int, padding_side: str) -> dict[str, Any]:
    """A batch of encoded prompts ([1, n] tensors from the processor) by interlace.data.encode.collate;
    bookkeeping keys (`_truncated`) and non-tensor outputs are left out."""
    import torch

    from interlace.data.encode import collate

    examples = [
        {k: v[0] if k in _TOKEN_KEYS else v for k, v in e.items() if isinstance(v, torch.Tensor)}
        for e in encoded
    ]
    out = collate(examples, pad_token_id, padding_side=padding_side)
    if "attention_mask" not in out:
        out["attention_mask"] = (out["input_ids"] != pad_token_id).long()
    return out


def calibration_batches(
    samples: Iterable[Sample],
    processor: Any,
    *,
    batch_size: int,
    max_length: int,
    stats: CalibrationStats | None = None,
) -> Iterator[dict[str, Any]]:
    """Padded batches (dicts of tensors with attention_mask) of the samples' calibration prompts."""
    if batch_size < 1:
        raise InterlaceError(f"batch size must be >= 1, got {batch_size}")
    if max_length < 16:
        raise InterlaceError(f"max length must be >= 16 tokens, got {max_length}")
    tok = tokenizer_of(processor)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    if pad_id is None:
        raise InterlaceError("the tokenizer has neither a pad token nor an eos token to pad with")
    side = getattr(tok, "padding_side", "right") or "right"
    st = stats if stats is not None else CalibrationStats()
    pending: list[dict[str, Any]] = []
    for sample in samples:
        enc = encode_prompt(sample, processor, max_length=max_length)
        if enc is None:
            st.skipped_too_long += 1
            continue
        st.truncated += int(bool(enc.get("_truncated")))
        st.images += len(sample.images) if is_multimodal_processor(processor) else 0
        pending.append(enc)
        if len(pending) == batch_size:
            batch = _collate(pending, pad_token_id=pad_id, padding_side=side)
            st.samples += len(pending)
            st.batches += 1
            st.tokens += int(batch["attention_mask"].sum())
            pending = []
            yield batch
    if pending:
        batch = _collate(pending, pad_token_id=pad_id, padding_side=side)
        st.samples += len(pending)
        st.batches += 1
        st.tokens += int(batch["attention_mask"].sum())
        yield batch
