"""Counters of one data pass: what was read, what became a sample, and why the rest was skipped.

A run over millions of crawled rows always meets a few broken ones; they must not kill a multi-hour
job, but silently dropping data hides real problems. So every skipped row is counted by reason and
the counts end up in the run's logs and results.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataStats:
    """rows_read: rows pulled from the source (after sampling); samples: rows that became a `Sample`;
    skipped: reason -> count for the rest (bad_json, bad_texts, bad_turn, bad_images,
    undecodable_image, too_many_images, empty, missing_text, too_short, ...)."""

    rows_read: int = 0
    samples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, object]:
        return {"rows_read": self.rows_read, "samples": self.samples, "skipped": dict(self.skipped)}

    def summary(self) -> str:
        """One line for logs: `120 rows, 117 samples, skipped: too_many_images=2, bad_turn=1`."""
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"{self.rows_read} rows, {self.samples} samples, skipped: {skipped}"
