"""Where rows come from: a DataSpec's `path` resolved into subsets with files and row counts.

Three kinds of `path`:

* a hub dataset id: each subset is a config streamed with `datasets`. FineVision's row counts come
  from the shipped table `finevision_subsets.json` only (a selected subset without a count there is an
  InterlaceError); another dataset's from its split metadata on the hub (a failing request is an
  error), else `maxSamples` must be set (streaming cannot tell a subset's size);
* a local directory or glob of `.parquet` / `.jsonl` (and `.txt` for `format: text`) shards: files
  directly in the directory form one subset named after the directory, files below a subdirectory form
  the subset named after that subdirectory (FineVision's own layout, `<root>/<subset>/train-*.parquet`);
  a glob groups files by their parent directory's name. Row counts are exact (parquet footers, lines);
* `builtin:english` / `builtin:english-heldout`: real English text from Debian packages, and
  `builtin:python-docs` (the Python standard library's docstrings, out-of-domain evaluation text),
  materialised once into a jsonl shard by `interlace.builtin` and then read like any local shard.

Everything that can be wrong with a source is found by `resolve_subsets` before a single row is read,
so `check_source` can fail a job before any GPU time is spent.
"""

from __future__ import annotations

import glob as globlib
import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from interlace.errors import InterlaceError
from interlace.schema.spec import DataSpec
from interlace.settings import settings

FINEVISION_ID = "HuggingFaceM4/FineVision"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GLOB_CHARS = set("*?[")
_ROW_EXTS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
_TEXT_EXTS = {**_ROW_EXTS, ".txt": "txt"}

Kind = Literal["hub", "parquet", "jsonl", "txt"]


@dataclass
class Subset:
    """One subset of a source. Local subsets have `files`; hub subsets have `hub_id`."""

    name: str
    num_rows: int | None
    files: list[tuple[Path, Kind]] = field(default_factory=list)
    hub_id: str | None = None
    split: str = "train"

    @property
    def kind(self) -> str:
        return "hub" if self.hub_id else "local"


def finevision_table() -> dict[str, int | None]:
    """The shipped FineVision subset table: config name -> train rows (None = unknown here)."""
    text = resources.files("interlace.data").joinpath("finevision_subsets.json").read_text()
    return dict(json.loads(text)["subsets"])


def _offline() -> bool:
    return settings().offline


def resolve_subsets(spec: DataSpec, *, where: str = "data") -> list[Subset]:
    """All selected subsets of the spec's source, each with its row count when knowable.

    Raises InterlaceError naming the field (`<where>.path`, `<where>.subsets`, `<where>.maxSamples`)
    and the fix for: a missing path, a directory without shards, an unreadable shard, an unknown
    subset, a hub id while offline, and a hub subset of unknown size without maxSamples.
    """
    path = spec.path.strip()
    if path.startswith("builtin:"):
        from interlace.builtin import resolve_source

        path = str(resolve_source(path))
    if Path(path).expanduser().exists() or _GLOB_CHARS & set(path):
        subsets = _local_subsets(path, spec, where)
    elif _HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        subsets = _hub_subsets(path, spec, where)
    else:
        raise InterlaceError(
            f"{where}.path: {spec.path!r} does not exist; give a local directory or glob of "
            f".parquet/.jsonl shards, a hub dataset id like {FINEVISION_ID}, or builtin:english"
        )
    return _select(subsets, spec, where)


def _select(subsets: list[Subset], spec: DataSpec, where: str) -> list[Subset]:
    if not spec.subsets:
        return subsets
    by_name = {s.name: s for s in subsets}
    unknown = [n for n in spec.subsets if n not in by_name]
    if unknown:
        names = sorted(by_name)
        shown = ", ".join(names[:40]) + (f", ... ({len(names)} in all)" if len(names) > 40 else "")
        raise InterlaceError(
            f"{where}.subsets: unknown subset(s) {unknown} in {spec.path!r}; available: {shown}"
        )
    if len(set(spec.subsets)) != len(spec.subsets):
        raise InterlaceError(f"{where}.subsets: {spec.subsets} lists a subset twice; list each once")
    return [by_name[n] for n in spec.subsets]


# ------------------------------------------------------------------------------------------ local


def _local_subsets(path: str, spec: DataSpec, where: str) -> list[Subset]:
    exts = _TEXT_EXTS if spec.format == "text" else _ROW_EXTS
    expanded = os.path.expanduser(path)
    grouped: dict[str, list[Path]] = {}
    if _GLOB_CHARS & set(path) and not Path(expanded).exists():
        for f in sorted(globlib.glob(expanded, recursive=True)):
            p = Path(f)
            if p.is_file() and p.suffix.lower() in exts:
                grouped.setdefault(p.parent.name or "default", []).append(p)
    else:
        root = Path(expanded)
        if root.is_file():
            candidates = [root] if root.suffix.lower() in exts else []
            for p in candidates:
                grouped.setdefault(p.parent.name or "default", []).append(p)
        else:
            for p in sorted(root.rglob("*")):
                if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."):
                    rel = p.relative_to(root)
                    name = rel.parts[0] if len(rel.parts) > 1 else (root.resolve().name or "default")
                    grouped.setdefault(name, []).append(p)
    if not grouped:
        wanted = ", ".join(sorted(set(exts)))
        raise InterlaceError(
            f"{where}.path: no shards ({wanted}) found at {spec.path!r}"
            + ("" if spec.format == "text" else "; plain .txt files need format: text")
        )
    subsets = []
    for name, files in grouped.items():
        typed: list[tuple[Path, Kind]] = [(f, exts[f.suffix.lower()]) for f in files]  # type: ignore[misc]
        rows = sum(_count_rows(f, kind, where) for f, kind in typed)
        subsets.append(Subset(name=name, num_rows=rows, files=typed, split=spec.split))
    return subsets


def _count_rows(path: Path, kind: str, where: str) -> int:
    """Exact row count without reading the data: parquet footers, non-empty lines, paragraphs."""
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return int(pq.read_metadata(path).num_rows)
        if kind == "jsonl":
            with path.open("rb") as fh:
                return sum(1 for line in fh if line.strip())
        return len(split_paragraphs(path.read_text(encoding="utf-8", errors="replace")))
    except OSError as err:
        raise InterlaceError(f"{where}.path: cannot read shard {path}: {err.strerror or err}") from None
    except Exception as err:  # pyarrow raises ArrowInvalid for a damaged footer
        raise InterlaceError(
            f"{where}.path: {path} is not a readable {kind} file ({err}); remove or re-download it"
        ) from None


def split_paragraphs(text: str) -> list[str]:
    """Plain text -> documents separated by blank lines (each becomes one `text` row)."""
    return [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]


# -------------------------------------------------------------------------------------------- hub


def _hub_subsets(hub_id: str, spec: DataSpec, where: str) -> list[Subset]:
    if _offline():
        raise InterlaceError(
            f"{where}.path: {hub_id!r} is a hub dataset id, but the hub is offline "
            "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set); download its parquet shards and set "
            f"{where}.path to the local directory, or unset the offline variable"
        )
    if hub_id == FINEVISION_ID:
        table = finevision_table()
    else:
        try:
            import datasets

            table = dict.fromkeys(datasets.get_dataset_config_names(hub_id))
        except Exception as err:
            raise InterlaceError(
                f"{where}.path: cannot read hub dataset {hub_id!r} ({type(err).__name__}: {err}); "
                "check the id, your network and HF_TOKEN for gated datasets"
            ) from None
    subsets = [Subset(name=n, num_rows=table.get(n), hub_id=hub_id, split=spec.split) for n in table]
    selected = _select(subsets, spec, where)
    if hub_id == FINEVISION_ID:
        # The shipped table is the only source of FineVision's sizes: no silent fallback to the hub's
        # metadata (or to equal shares of maxSamples), since the paper's 1% needs the true counts.
        unsized = [s.name for s in selected if s.num_rows is None]
        if unsized:
            raise InterlaceError(
                f"{where}.path: the shipped FineVision table (interlace/data/finevision_subsets.json) has "
                f"no row count for {len(unsized)} selected subset(s) {unsized[:8]}"
                f"{' ...' if len(unsized) > 8 else ''}, so their 1% cannot be sized; download the "
                f"subsets' parquet shards and set {where}.path to the local directory (local counts are "
                f"exact), or list only sized subsets in {where}.subsets"
            )
        return subsets
    for s in selected:
        if s.num_rows is None:
            s.num_rows = _hub_split_rows(hub_id, s.name, spec.split, where)
    missing = [s.name for s in selected if s.num_rows is None]
    if missing and spec.max_samples is None:
        raise InterlaceError(
            f"{where}.maxSamples: the row count of subset(s) {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''} of {hub_id!r} is unknown (no split metadata on the "
            f"hub), so the fraction cannot be sized while streaming; set {where}.maxSamples"
        )
    return subsets


def _hub_split_rows(hub_id: str, name: str, split: str, where: str = "data") -> int | None:
    """num_examples from the dataset's metadata (the card's dataset_info); None when the metadata has
    no count for the split. A metadata request that fails is an InterlaceError, not a silent None."""
    import datasets

    try:
        info = datasets.load_dataset_builder(hub_id, name=name).info
    except Exception as err:
        raise InterlaceError(
            f"{where}.path: cannot read the metadata of subset {name!r} of {hub_id!r} "
            f"({type(err).__name__}: {err}); check the id, your network and HF_TOKEN"
        ) from None
    splits = info.splits or {}
    return int(splits[split].num_examples) if split in splits and splits[split].num_examples else None
