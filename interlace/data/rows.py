"""Row normalisation: one raw row (FineVision schema, or plain text) -> one `Sample`, or a reason to skip.

FineVision rows are `{"images": [image, ...], "texts": [{"user": str, "assistant": str, "system"?: str},
...], "source": str, <per-turn quality ratings>}`. Images arrive in several shapes depending on where
the row came from: PIL images (datasets decoding on), `{"bytes": b"...", "path": ...}` structs (parquet
without decoding), a file path, or base64 text (jsonl). All are decoded here, so that one bad image is a
counted skip of its row rather than an exception deep inside `datasets` that ends the run.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from interlace.data.sample import Sample, Turn


class MalformedRow(Exception):
    """The row cannot become a Sample; `reason` is the DataStats.skipped key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def cap_pixels(image: Any, max_pixels: int) -> Any:
    """Downscale `image` (PIL) so that width*height <= max_pixels, keeping the aspect ratio.

    The paper caps images at 50,176 pixels (224x224). Both sides shrink by the same factor and are
    floored, so the cap always holds; nothing is ever upscaled.
    """
    from PIL import Image

    w, h = image.size
    if w * h <= max_pixels:
        return image
    scale = math.sqrt(max_pixels / (w * h))
    nw, nh = max(1, math.floor(w * scale)), max(1, math.floor(h * scale))
    while nw * nh > max_pixels:  # float rounding at the boundary
        if nw >= nh:
            nw -= 1
        else:
            nh -= 1
    return image.resize((nw, nh), Image.Resampling.BICUBIC)


def decode_image(value: Any, *, base_dir: Path | None = None) -> Any:
    """Any supported image representation -> an RGB PIL image (fully loaded). Raises MalformedRow."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        img = value
    else:
        data: bytes | None = None
        path: str | None = None
        if isinstance(value, Mapping):
            raw = value.get("bytes")
            path = value.get("path")
            if isinstance(raw, (bytes, bytearray, memoryview)):
                data = bytes(raw)
            elif isinstance(raw, str) and raw:
                data = _b64(raw)
            elif raw is not None:
                raise MalformedRow("bad_images", f"image bytes of type {type(raw).__name__}")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        elif isinstance(value, str):
            path = value
        else:
            raise MalformedRow("bad_images", f"image of type {type(value).__name__}")
        if data is None:
            if not isinstance(path, str) or not path:
                raise MalformedRow("bad_images", "image without bytes or path")
            p = Path(path)
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            try:
                data = p.read_bytes()
            except OSError as err:
                raise MalformedRow("undecodable_image", f"{p}: {err.strerror}") from None
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise MalformedRow("undecodable_image", str(err)) from None
    try:
        return img.convert("RGB") if img.mode != "RGB" else img
    except (OSError, ValueError) as err:
        raise MalformedRow("undecodable_image", str(err)) from None


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedRow("undecodable_image", "image bytes are not valid base64") from None


def finevision_row_to_sample(
    row: Any,
    *,
    max_images: int,
    max_turns: int,
    max_pixels: int,
    source: str,
    base_dir: Path | None = None,
) -> Sample:
    """Validate and normalise one FineVision row.

    Order matters for cost: the image count and the text structure are checked before any image is
    decoded, so rows that will be skipped anyway cost no decoding. `max_turns` counts FineVision turns
    (one user message plus its assistant answer; a system message does not count). The reference's
    preparation stops a conversation at 5 messages, i.e. 3 turns, hence the default maxTurns 3.
    """
    if not isinstance(row, Mapping):
        raise MalformedRow("bad_row", f"row of type {type(row).__name__}")
    texts = row.get("texts")
    if texts is None:
        raise MalformedRow("bad_texts", "missing `texts`")
    if not isinstance(texts, list) or not texts:
        raise MalformedRow("bad_texts", "`texts` must be a non-empty list of turns")
    images = row.get("images")
    if images is None:
        images = []
    if not isinstance(images, list):
        raise MalformedRow("bad_images", "`images` must be a list")
    if len(images) > max_images:
        raise MalformedRow("too_many_images", f"{len(images)} > maxImages={max_images}")

    turns: list[Turn] = []
    for t in texts[:max_turns]:
        if not isinstance(t, Mapping):
            raise MalformedRow("bad_turn", "a turn is not a {user, assistant} mapping")
        user, assistant, system = t.get("user"), t.get("assistant"), t.get("system")
        if not isinstance(user, str) or not isinstance(assistant, str):
            raise MalformedRow("bad_turn", "a turn lacks string `user` and `assistant`")
        if system is not None and not isinstance(system, str):
            raise MalformedRow("bad_turn", "`system` must be a string")
        if system and system.strip():
            turns.append(Turn("system", system.strip()))
        turns.append(Turn("user", user.strip()))
        turns.append(Turn("assistant", assistant.strip()))
    if not any(t.role == "assistant" and t.text for t in turns):
        raise MalformedRow("empty", "no non-empty assistant answer")

    pil = [cap_pixels(decode_image(v, base_dir=base_dir), max_pixels) for v in images]
    return Sample(turns=turns, images=pil, source=source)


_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+|\n+")


def text_to_sample(text: Any, *, source: str) -> Sample:
    """Plain text -> a one-turn conversation for text-only models.

    The text is split at the sentence or line boundary nearest its middle (else at the word boundary
    nearest the middle): the first part is the user turn, the rest the assistant's answer. That keeps
    every token of the text in the sample, gives calibration (which sees the first user turn only) real
    varied text instead of a fixed instruction, and trains the model on continuing real English.
    """
    if not isinstance(text, str):
        raise MalformedRow("missing_text", f"`text` of type {type(text).__name__}")
    text = text.strip()
    words = text.split()
    if len(words) < 2:
        raise MalformedRow("too_short", "a text needs at least two words")
    mid = len(text) / 2
    cuts = [m.start() for m in _SENTENCE_END.finditer(text) if 0 < m.start() < len(text)]
    if not cuts:
        cuts = [m.start() for m in re.finditer(r"\s+", text)]
    cut = min(cuts, key=lambda c: (abs(c - mid), c))
    user, assistant = text[:cut].strip(), text[cut:].strip()
    return Sample(turns=[Turn("user", user), Turn("assistant", assistant)], images=[], source=source)
