"""Read rows of local shards by index: what a worker does with its share of the data plan.

`RowReader(spec)` resolves the spec's subsets (footers and line counts only). `samples(rows)` fetches
exactly those rows and turns them into Samples (interlace.data.loader.row_to_sample: images decoded,
malformed rows skipped and counted): nothing else is decoded.

* parquet: the subset's files in name order form one index space; a row is found through the footers'
  row-group sizes and read from its row group (pyarrow; the last few row groups read are kept, since
  the rows of one subset in a micro-batch often share one). Bytes are read at row-group granularity;
  images are decoded only for the rows asked for.
* jsonl: a byte-offset index of the non-empty lines (built once per file, no JSON parsed), then a
  seek per row. txt: the file's paragraphs.

Row numbering is the loader's (`interlace.data.loader._stream`), so `<subset>#<row>` names the same
row on both paths. Hub subsets cannot be read by index here (InterlaceError): callers keep the
streaming path for them.
"""

from __future__ import annotations

import bisect
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interlace.data.dataplan import DataPlan, Row
from interlace.data.loader import _Bad, effective_spec, row_to_sample
from interlace.data.sample import Sample
from interlace.data.sources import Subset, resolve_subsets, split_paragraphs
from interlace.data.stats import DataStats
from interlace.errors import InterlaceError
from interlace.schema.spec import DataSpec

_ROW_GROUP_CACHE = 4


def plan_readable(spec: DataSpec) -> bool:
    """True when the spec's source is local shards (or builtin): rows can be read by index."""
    return all(s.hub_id is None for s in resolve_subsets(effective_spec(spec)))


@dataclass
class _Piece:
    """A run of rows of one subset: rows [start, start + count) live in `path` (row group `group`)."""

    start: int
    count: int
    path: Path
    kind: str
    group: int = 0
    offsets: list[int] = field(default_factory=list)  # jsonl: byte offset of each non-empty line


class RowReader:
    """Rows of a local source by (subset name, row index)."""

    def __init__(self, spec: DataSpec, *, where: str = "data") -> None:
        self.spec = effective_spec(spec)
        self.subsets = {s.name: s for s in resolve_subsets(self.spec, where=where)}
        hub = [n for n, s in self.subsets.items() if s.hub_id]
        if hub:
            raise InterlaceError(f"{where}.path: hub subsets {hub[:5]} cannot be read by row index")
        self._pieces: dict[str, list[_Piece]] = {}
        self._groups: OrderedDict[tuple[Path, int], list[dict[str, Any]]] = OrderedDict()
        self._paragraphs: dict[Path, list[str]] = {}
        self.stats = DataStats()

    def samples(self, plan: DataPlan, rows: Sequence[Row]) -> list[Sample]:
        """The Samples of `rows` (plan rows), in order; malformed rows are skipped (see self.stats)."""
        return self.samples_of([plan.row_id(r) for r in rows])

    def samples_of(self, ids: Sequence[str]) -> list[Sample]:
        """The Samples of ids `<subset>#<row>`, in order; malformed rows are skipped (see self.stats)."""
        out = []
        for row_id in ids:
            name, _, index = row_id.rpartition("#")
            if not name or not index.isdigit():
                raise InterlaceError(f"data plan id {row_id!r} is not <subset>#<row>")
            raw, base = self.row(name, int(index))
            s = row_to_sample(raw, self.spec, source=row_id, base_dir=base, stats=self.stats)
            if s is not None:
                out.append(s)
        return out

    def row(self, subset: str, index: int) -> tuple[Any, Path]:
        """The raw row `index` of `subset` and the directory its relative image paths start from."""
        if subset not in self.subsets:
            raise InterlaceError(f"data plan names subset {subset!r}, which {self.spec.path!r} does not have")
        pieces = self._index(self.subsets[subset])
        k = bisect.bisect_right([p.start for p in pieces], index) - 1
        if k < 0 or index >= pieces[k].start + pieces[k].count:
            raise InterlaceError(f"data plan row {subset}#{index} is past the end of the subset")
        p = pieces[k]
        local = index - p.start
        if p.kind == "parquet":
            return self._row_group(p.path, p.group)[local], p.path.parent
        if p.kind == "jsonl":
            with p.path.open("rb") as fh:
                fh.seek(p.offsets[local])
                line = fh.readline()
            try:
                return json.loads(line), p.path.parent
            except (json.JSONDecodeError, UnicodeDecodeError):
                return _Bad("bad_json"), p.path.parent
        paras = self._paragraphs.get(p.path)
        if paras is None:
            paras = split_paragraphs(p.path.read_text(encoding="utf-8", errors="replace"))
            self._paragraphs[p.path] = paras
        return {"text": paras[local]}, p.path.parent

    def _index(self, subset: Subset) -> list[_Piece]:
        pieces = self._pieces.get(subset.name)
        if pieces is not None:
            return pieces
        import pyarrow.parquet as pq

        pieces, start = [], 0
        parquet = [f for f, k in subset.files if k == "parquet"]
        for f, kind in subset.files:
            if kind == "parquet":
                if f != parquet[0]:
                    continue  # the loader streams all parquet files of a subset together, in order
                for pf in parquet:
                    meta = pq.read_metadata(pf)
                    for g in range(meta.num_row_groups):
                        n = meta.row_group(g).num_rows
                        pieces.append(_Piece(start, n, pf, "parquet", group=g))
                        start += n
            elif kind == "jsonl":
                offsets, pos = [], 0
                with f.open("rb") as fh:
                    for line in fh:
                        if line.strip():
                            offsets.append(pos)
                        pos += len(line)
                pieces.append(_Piece(start, len(offsets), f, "jsonl", offsets=offsets))
                start += len(offsets)
            else:
                n = len(split_paragraphs(f.read_text(encoding="utf-8", errors="replace")))
                pieces.append(_Piece(start, n, f, "txt"))
                start += n
        self._pieces[subset.name] = pieces
        return pieces

    def _row_group(self, path: Path, group: int) -> list[dict[str, Any]]:
        key = (path, group)
        rows = self._groups.get(key)
        if rows is None:
            import pyarrow.parquet as pq

            rows = pq.ParquetFile(path).read_row_group(group).to_pylist()
            self._groups[key] = rows
            while len(self._groups) > _ROW_GROUP_CACHE:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        return rows
