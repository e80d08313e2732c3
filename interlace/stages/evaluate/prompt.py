"""Turning a question (and optionally an image) into model inputs ready for `generate`.

Evaluation and the speed report both need "a user turn, then the assistant's generation prompt", for
text models (a tokenizer) and VLMs (a processor) alike, batched with LEFT padding so that every row's
next token is generated right after its own prompt (`generate` derives positions from the attention
mask, so padded and unpadded rows give the same answer).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from interlace.data.chat import chat_messages, is_multimodal_processor, tokenizer_of
from interlace.data.sample import Turn

log = logging.getLogger(__name__)


@contextmanager
def left_padding(processor: Any) -> Iterator[Any]:
    """Temporarily pad on the left (and make sure a pad token exists); restores the tokenizer after."""
    tok = tokenizer_of(processor)
    old_side, old_pad = tok.padding_side, tok.pad_token
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    try:
        yield tok
    finally:
        tok.padding_side = old_side
        if old_pad is None:
            tok.pad_token = None


def render_prompt(processor: Any, question: str, *, with_image: bool) -> str:
    """The prompt text: the model's chat template with a generation prompt, or a plain Q/A layout."""
    tok = tokenizer_of(processor)
    if is_multimodal_processor(processor):
        messages = chat_messages([Turn("user", question)], images=int(with_image), multimodal=True)
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if getattr(tok, "chat_template", None):
        messages = chat_messages([Turn("user", question)], images=0, multimodal=False)
        return tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return f"Question: {question}\nAnswer:"


def encode_prompts(
    processor: Any, questions: Sequence[str], images: Sequence[Any | None], *, device: Any = "cpu"
) -> dict[str, Any]:
    """Encode a batch of prompts (left padded). `images[i]` is a PIL image or None.

    A text-only model cannot look at an image: rows with one are encoded without it (logged once per
    batch), which keeps text-only smoke runs on image sets possible but is noted in the log.
    """
    multimodal = is_multimodal_processor(processor)
    if not multimodal and any(img is not None for img in images):
        log.warning("text-only model: images of %d evaluation rows are ignored",
                    sum(img is not None for img in images))
    texts = [
        render_prompt(processor, q, with_image=multimodal and img is not None)
        for q, img in zip(questions, images, strict=True)
    ]
    tok = tokenizer_of(processor)
    # The chat template already contains BOS where the model wants one; the plain layout does not.
    templated = multimodal or bool(getattr(tok, "chat_template", None))
    with left_padding(processor):
        if multimodal:
            imgs = [img for img in images if img is not None]
            enc = processor(
                text=texts,
                images=imgs or None,
                padding=True,
                return_tensors="pt",
                add_special_tokens=not templated,
            )
        else:
            enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=not templated)
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in enc.items()}


def model_device(model: Any) -> Any:
    """The device of the model's first parameter (inputs go there)."""
    return next(model.parameters()).device
