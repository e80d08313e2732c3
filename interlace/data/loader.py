"""`load_samples`: a DataSpec -> a stream of `Sample`s, sampled per subset, filtered, never crashing on
a bad row.

The pass over one subset: pick the row indices (sampling.py), stream the subset once in its stored
order and keep the picked rows, normalise each into a Sample (rows.py) or count why it was skipped
(stats.py). Subsets are read one after another in the order the spec (or the table) lists them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interlace.data.rows import MalformedRow, finevision_row_to_sample, text_to_sample
from interlace.data.sample import Sample
from interlace.data.sampling import pick_indices, rows_to_take, share_cap, subset_seed
from interlace.data.sources import Subset, resolve_subsets, split_paragraphs
from interlace.data.stats import DataStats
from interlace.schema.spec import DataSpec

log = logging.getLogger(__name__)


@dataclass
class _Bad:
    """A row that could not even be parsed (a broken jsonl line)."""

    reason: str


@dataclass
class SubsetPlan:
    subset: Subset
    quota: int
    indices: list[int] | None  # None: size unknown (hub, maxSamples set): stream/shuffle and take quota


def effective_spec(spec: DataSpec) -> DataSpec:
    """Builtin sources know their own schema: `builtin:english` is conversation rows, whatever
    `format` says (a text-only model may well set `format: text` and point at it)."""
    if spec.path.strip().startswith("builtin:") and spec.format != "finevision":
        return spec.model_copy(update={"format": "finevision"})
    return spec


def plan(spec: DataSpec, *, where: str = "data") -> list[SubsetPlan]:
    """Resolve the source and decide, per subset, which rows to read. Raises InterlaceError."""
    spec = effective_spec(spec)
    subsets = resolve_subsets(spec, where=where)
    quotas = [rows_to_take(s.num_rows, spec.fraction) if s.num_rows is not None else 0 for s in subsets]
    unknown = [i for i, s in enumerate(subsets) if s.num_rows is None]
    if unknown and spec.max_samples:
        # Unsized subsets (hub, no metadata) get an equal share of maxSamples; the sized ones share
        # what is left in proportion to their fractions.
        equal = share_cap([spec.max_samples] * len(subsets), spec.max_samples)
        for i in unknown:
            quotas[i] = equal[i]
        known = [i for i in range(len(subsets)) if i not in unknown]
        left = spec.max_samples - sum(quotas[i] for i in unknown)
        for i, q in zip(known, share_cap([quotas[i] for i in known], left), strict=True):
            quotas[i] = q
    else:
        quotas = share_cap(quotas, spec.max_samples)
    plans = []
    for s, q in zip(subsets, quotas, strict=True):
        if q <= 0:
            continue
        idx = (
            pick_indices(s.num_rows, q, mode=spec.sampling, seed=spec.seed, subset=s.name)
            if s.num_rows is not None
            else None
        )
        plans.append(SubsetPlan(subset=s, quota=q, indices=idx))
    return plans


def load_samples(
    spec: DataSpec, *, limit: int | None = None, stats: DataStats | None = None
) -> Iterator[Sample]:
    """Samples of `spec`, at most `limit` (a plain stop after that many, in stream order).

    The source is resolved and checked now (InterlaceError here, not at the first `next`); rows are
    read lazily. Pass a DataStats to see how many rows were read and why some were skipped.
    """
    spec = effective_spec(spec)
    plans = plan(spec)
    return _generate(plans, spec, limit, stats if stats is not None else DataStats())


def _generate(plans: list[SubsetPlan], spec: DataSpec, limit: int | None, stats: DataStats) -> Iterator[Sample]:
    emitted = 0
    if limit is not None and limit <= 0:
        return
    for p in plans:
        for index, row, base_dir in _picked_rows(p, spec):
            sample = row_to_sample(row, spec, source=f"{p.subset.name}#{index}", base_dir=base_dir, stats=stats)
            if sample is None:
                continue
            yield sample
            emitted += 1
            if limit is not None and emitted >= limit:
                return


def row_to_sample(
    row: Any, spec: DataSpec, *, source: str, base_dir: Path | None, stats: DataStats
) -> Sample | None:
    """One raw row -> a Sample (decoding its images), or None with the reason counted in `stats`."""
    stats.rows_read += 1
    try:
        if isinstance(row, _Bad):
            raise MalformedRow(row.reason)
        if spec.format == "text":
            text = row.get("text") if isinstance(row, dict) else None
            sample = text_to_sample(text, source=source)
        else:
            sample = finevision_row_to_sample(
                row,
                max_images=spec.max_images,
                max_turns=spec.max_turns,
                max_pixels=spec.max_pixels,
                source=source,
                base_dir=base_dir,
            )
    except MalformedRow as err:
        stats.skip(err.reason)
        log.debug("skipped %s: %s", source, err)
        return None
    stats.samples += 1
    return sample


def _picked_rows(p: SubsetPlan, spec: DataSpec) -> Iterator[tuple[int, Any, Path | None]]:
    """(index within the subset, raw row, directory for relative image paths) of the picked rows."""
    if p.indices is None:
        yield from _unsized_rows(p, spec)
        return
    wanted = p.indices
    if not wanted:
        return
    last = wanted[-1]
    pos = 0
    for index, row, base in _stream(p.subset):
        if index == wanted[pos]:
            yield index, row, base
            pos += 1
            if pos == len(wanted):
                return
        if index >= last:
            return


def _unsized_rows(p: SubsetPlan, spec: DataSpec) -> Iterator[tuple[int, Any, Path | None]]:
    """Hub subset of unknown size: `first` takes the first quota rows; `random` draws them through a
    seeded 10,000-row shuffle buffer (deterministic for a seed, but not a uniform draw over the subset)."""
    ds = _hub_stream(p.subset)
    if spec.sampling == "random":
        ds = ds.shuffle(seed=subset_seed(spec.seed, p.subset.name) % 2**32, buffer_size=10_000)
    for i, row in enumerate(ds.take(p.quota)):
        yield i, row, None


def _stream(subset: Subset) -> Iterator[tuple[int, Any, Path | None]]:
    """Every row of the subset in stored order: files sorted by name, rows in file order."""
    if subset.hub_id:
        for i, row in enumerate(_hub_stream(subset)):
            yield i, row, None
        return
    index = 0
    parquet = [f for f, k in subset.files if k == "parquet"]
    for f, kind in subset.files:
        if kind == "parquet":
            if f != parquet[0]:
                continue  # all parquet files of the subset are streamed together, in order, below
            for row in _parquet_stream(parquet):
                yield index, row, f.parent
                index += 1
        elif kind == "jsonl":
            for row in _jsonl_rows(f):
                yield index, row, f.parent
                index += 1
        else:
            for para in split_paragraphs(f.read_text(encoding="utf-8", errors="replace")):
                yield index, {"text": para}, f.parent
                index += 1


def _parquet_stream(files: list[Path]) -> Iterable[dict[str, Any]]:
    """Local parquet shards through `datasets` streaming, the same code path as the hub.

    Image decoding is switched off (`decode(False)`): images arrive as {bytes, path} and are decoded
    by rows.decode_image, where a broken image is a counted skip instead of an exception.
    """
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files={"train": [str(f) for f in files]}, split="train", streaming=True
    )
    return ds.decode(False)


def _hub_stream(subset: Subset) -> Any:
    import datasets

    ds = datasets.load_dataset(subset.hub_id, name=subset.name, split=subset.split, streaming=True)
    return ds.decode(False)


def _jsonl_rows(path: Path) -> Iterator[Any]:
    """One row per non-empty line; a line that is not JSON is a `bad_json` row, not an exception."""
    with path.open("rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                yield _Bad("bad_json")
