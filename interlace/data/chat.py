"""What every stage asks of a model's processor, in one place: is it multimodal, which tokenizer does
it carry, and the chat messages of a conversation (calibration, finetuning and evaluation all render
them with the model's own chat template).

A VLM's processor carries an image processor next to its text tokenizer; a text model's "processor"
is its tokenizer. No torch or transformers import: these only look at attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from interlace.data.sample import Sample, Turn


def is_multimodal_processor(processor: Any) -> bool:
    """True for a VLM processor (it has an image processor), False for a tokenizer."""
    return getattr(processor, "image_processor", None) is not None


def tokenizer_of(processor: Any) -> Any:
    """The text tokenizer of a VLM processor, or the tokenizer itself for a text model."""
    tokenizer = getattr(processor, "tokenizer", None)
    return processor if tokenizer is None else tokenizer


def chat_messages(turns: Sequence[Turn], *, images: int, multimodal: bool) -> list[dict[str, Any]]:
    """Chat-template messages of `turns`. For a multimodal processor the content is a list and the
    `images` image placeholders come first in the first user turn (FineVision shows all images with
    the first question); for a tokenizer the content is the plain text."""
    msgs: list[dict[str, Any]] = []
    images_placed = False
    for t in turns:
        if not multimodal:
            msgs.append({"role": t.role, "content": t.text})
            continue
        content: list[dict[str, Any]] = []
        if t.role == "user" and not images_placed:
            content.extend({"type": "image"} for _ in range(images))
            images_placed = True
        content.append({"type": "text", "text": t.text})
        msgs.append({"role": t.role, "content": content})
    return msgs


def messages_for(sample: Sample, *, multimodal: bool) -> list[dict[str, Any]]:
    """Chat-template messages of a whole sample, its images in the first user turn."""
    return chat_messages(sample.turns, images=len(sample.images), multimodal=multimodal)
