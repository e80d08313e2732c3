"""Where a hub dataset's parquet files are, for reading planned rows by index (interlace.data.reader).

FineVision's repository (huggingface.co/datasets/HuggingFaceM4/FineVision, branch `main`) holds one
directory per subset (config) with the shards `<subset>/train-0000k-of-0000n.parquet` (e.g.
`cocoqa/train-00000-of-00005.parquet` ... `train-00004-of-00005.parquet`), and the card's configs
point each config at `<subset>/train-*`, so `datasets` streams a subset as those files in name order:
the row numbering of the plan (`<subset>#<row>`) is the position in that concatenation. That layout is
looked for first; then the hub's own conversion, branch `refs/convert/parquet`, `<config>/<split>/
0000.parquet, 0001.parquet, ...` (the Dataset Viewer's copy, in the same row order; a `partial-<split>`
conversion of a big dataset is not used). Assumed from the repository's file listing and the card,
not verified against the hub from here (no network where this was written).

`hub_filesystem(hub_id)` is the one place that knows it is the hub: an fsspec file system and the
repository's root in it (`HfFileSystem()`, `datasets/<id>`). Tests replace it by a local file system
and a directory laid out like the repository.
"""

from __future__ import annotations

import posixpath
from typing import Any

from interlace.errors import InterlaceError, TransientError

CONVERTED = "refs/convert/parquet"


def hub_filesystem(hub_id: str) -> tuple[Any, str]:
    """(fsspec file system, root of the dataset repository in it) for `hub_id`."""
    from huggingface_hub import HfFileSystem

    return HfFileSystem(), f"datasets/{hub_id}"


def _names(fs: Any, directory: str) -> list[str]:
    try:
        return [str(p) for p in fs.ls(directory, detail=False)]
    except FileNotFoundError:
        return []


def subset_files(fs: Any, root: str, hub_id: str, subset: str, split: str, *, where: str) -> list[str]:
    """The parquet files of one subset's split, in the order `datasets` reads them (sorted by name).
    Raises InterlaceError naming `<where>.path` and the subset when none can be listed: a hub source
    is never silently read as a stream instead."""
    looked = [f"{root}/{subset}/{split}-*.parquet", f"{root}@{CONVERTED}/{subset}/{split}/*.parquet"]
    try:
        main = [
            p for p in _names(fs, f"{root}/{subset}")
            if posixpath.basename(p).startswith(f"{split}-") and p.endswith(".parquet")
        ]
        if main:
            return sorted(main, key=posixpath.basename)
        converted = [p for p in _names(fs, f"{root}@{CONVERTED}/{subset}/{split}") if p.endswith(".parquet")]
        if converted:
            return sorted(converted, key=posixpath.basename)
    except Exception as err:  # network, auth, rate limits: say so, with the subset
        raise TransientError(
            f"{where}.path: cannot list the parquet files of subset {subset!r} of {hub_id!r} "
            f"({type(err).__name__}: {err}); check your network and HF_TOKEN, or download the subset's "
            f"parquet shards and set {where}.path to the local directory"
        ) from None
    raise InterlaceError(
        f"{where}.path: subset {subset!r} of {hub_id!r} has no parquet files for split {split!r} "
        f"(looked for {looked[0]} and {looked[1]}), so its planned rows cannot be read by index; "
        f"download the subset's parquet shards and set {where}.path to the local directory"
    )
