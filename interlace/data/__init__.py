"""Conversation data for calibration, finetuning and evaluation.

* `load_samples(spec)`: FineVision (hub, streamed; finetuning and calibration instead read the data
  plan's rows by index, interlace.data.dataplan and interlace.data.reader), local parquet/jsonl shards in its row schema,
  plain text (`format: text`) or `builtin:english`, sampled per subset (`first` or seeded `random`),
  filtered (maxImages, maxTurns, maxPixels), malformed rows skipped and counted in `DataStats`.
* `check_source(spec)`: everything about the source that can fail, checked before any GPU time.
* `interlace.data.encode`: Sample -> input_ids/labels (assistant tokens only) and batch collation.

Heavy libraries (datasets, PIL, pyarrow) are imported lazily, inside the functions that use them.
"""

from __future__ import annotations

from interlace.data.loader import load_samples, plan
from interlace.data.stats import DataStats
from interlace.schema.spec import DataSpec


def check_source(spec: DataSpec, *, where: str = "data") -> None:
    """Raise InterlaceError if the source cannot be read: missing path, no shards, unreadable shard,
    unknown subset, hub id while offline, unknown subset size without maxSamples.

    It resolves the subsets and sizes the sample (cheap: file footers and line counts, no row
    decoding). `where` is the field path used in messages, e.g. `spec.finetune.data`.
    """
    plan(spec, where=where)


__all__ = ["DataStats", "check_source", "load_samples"]
