"""The one in-memory form of a conversation sample, shared by data loading, calibration and training.

Loaders (interlace.data) turn FineVision rows, local shards or plain text into `Sample`s; the
calibration collator and the training tokenizer turn `Sample`s into tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]


@dataclass
class Turn:
    role: Role
    text: str


@dataclass
class Sample:
    """One conversation: turns in order, images (PIL images) shown with the first user turn."""

    turns: list[Turn]
    images: list[Any] = field(default_factory=list)  # PIL.Image.Image; typed loosely to avoid the import
    source: str = ""

    def first_user_turn(self) -> Sample:
        """The calibration view (the paper): system turns, then only the first user turn, same images."""
        kept: list[Turn] = []
        for t in self.turns:
            if t.role == "system":
                kept.append(t)
            elif t.role == "user":
                kept.append(t)
                break
        return Sample(turns=kept, images=list(self.images), source=self.source)
