"""Read rows by index: what a worker does with its share of the data plan.

`RowReader(spec)` resolves the spec's subsets (footers and line counts only). `samples(rows)` fetches
exactly those rows and turns them into Samples (interlace.data.loader.row_to_sample: images decoded,
malformed rows skipped and counted): nothing else is decoded.

* parquet: the subset's files in name order form one index space; a row is found through the footers'
  row-group sizes and read from its row group (pyarrow; the last few row groups read are kept, since
  the rows of one subset in a micro-batch often share one). Bytes are read at row-group granularity;
  images are decoded only for the rows asked for.
* jsonl: a byte-offset index of the non-empty lines (built once per file, no JSON parsed), then a
  seek per row. txt: the file's paragraphs.
* hub subsets (`path` a hub id): the same parquet reading, through an fsspec file system
  (interlace.data.hubfiles.hub_filesystem: HfFileSystem; the repository's `<subset>/<split>-*.parquet`,
  else `refs/convert/parquet`). A subset's files are listed when it is first read; footers are read
  in file order only as far as the highest row asked for (the 1% of `sampling: first` lives in the
  first file or two), then only the row groups holding asked-for rows are fetched (HTTP range reads),
  never a whole subset. Given the plan (`plan=`), the planned rows of every row group fetched are
  written to a local cache (`<INTERLACE_CACHE>/data/hub-rows/<id>/<split>/<subset>/<row>.parquet`,
  one row each), so a row group is fetched once per machine although the training order visits its
  rows far apart; the cache holds at most the plan's rows (for FineVision's 1%, images included, on
  the order of 50 GB; a smaller `fraction` or `maxSamples` shrinks it in proportion). It is keyed by
  id, split, subset and row, not by revision: delete it when the dataset changes.

`samples_of(ids)` fetches the rows sorted by subset and row (each row group once per call) and decodes
them in the order asked for. Row numbering is the loader's (`interlace.data.loader._stream`, and for
the hub `datasets`' order of the same files), so `<subset>#<row>` names the same row on every path.
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
from interlace.errors import InterlaceError, TransientError
from interlace.schema.spec import DataSpec

_ROW_GROUP_CACHE = 4


def plan_readable(spec: DataSpec) -> bool:
    """True when the spec's rows can be read by index, so the data plan is followed: local shards,
    builtin corpora and hub subsets of known size (FineVision: always, from the shipped table). A hub
    subset of unknown size (another dataset without split metadata, with maxSamples) has no plan and
    is streamed."""
    return all(s.hub_id is None or s.num_rows is not None for s in resolve_subsets(effective_spec(spec)))


def check_hub_files(spec: DataSpec, plan: DataPlan, *, where: str = "data") -> None:
    """List the parquet files of every hub subset the plan reads (one listing each, in parallel), so a
    subset the reader could not find fails before any GPU time, naming `<where>.path`. Local sources:
    nothing to do."""
    from concurrent.futures import ThreadPoolExecutor

    from interlace.data.hubfiles import hub_filesystem, subset_files

    subsets = {s.name: s for s in resolve_subsets(effective_spec(spec), where=where)}
    hub = [subsets[s.name] for s in plan.subsets if subsets[s.name].hub_id and (s.finetune or s.calibration)]
    if not hub:
        return
    fs, root = hub_filesystem(str(hub[0].hub_id))
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda s: subset_files(fs, root, str(s.hub_id), s.name, s.split, where=where), hub))


def hub_cache_root() -> Path:
    """Where planned hub rows are kept once fetched (see the module docstring)."""
    from interlace.settings import settings

    return settings().cache / "data" / "hub-rows"


@dataclass
class _Piece:
    """A run of rows of one subset: rows [start, start + count) live in `path` (row group `group`)."""

    start: int
    count: int
    path: Path | str  # a local Path, or a path in the hub's file system (`fs`)
    kind: str
    group: int = 0
    offsets: list[int] = field(default_factory=list)  # jsonl: byte offset of each non-empty line
    fs: Any = None  # hub: the fsspec file system holding `path`
    meta: Any = None  # hub: the file's parquet footer, read once


@dataclass
class _HubIndex:
    """A hub subset's files (listed once) and the pieces of the files whose footers were read so far."""

    files: list[str]
    pieces: list[_Piece] = field(default_factory=list)
    next_file: int = 0
    rows: int = 0  # rows covered by the footers read so far


class RowReader:
    """Rows of a source by (subset name, row index): local shards, builtin corpora, hub parquet files.

    `plan`: the data plan being read; for a hub source, its rows of each fetched row group are kept in
    the local row cache (`cache_dir`, default hub_cache_root())."""

    def __init__(
        self,
        spec: DataSpec,
        *,
        where: str = "data",
        plan: DataPlan | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.spec = effective_spec(spec)
        self.where = where
        self.subsets = {s.name: s for s in resolve_subsets(self.spec, where=where)}
        self._pieces: dict[str, list[_Piece]] = {}
        self._hub: dict[str, _HubIndex] = {}
        self._fs: tuple[Any, str] | None = None
        self._groups: OrderedDict[tuple[str, int], list[dict[str, Any]]] = OrderedDict()
        self._paragraphs: dict[Path, list[str]] = {}
        self._keep: dict[str, set[int]] = {}
        if plan is not None and any(s.hub_id for s in self.subsets.values()):
            self._keep = {s.name: set(s.finetune) | set(s.calibration) for s in plan.subsets}
        self._cache_dir = cache_dir
        self.stats = DataStats()
        self.groups_fetched: list[tuple[str, int]] = []  # hub row groups fetched, in order (tests, logs)

    def samples(self, plan: DataPlan, rows: Sequence[Row]) -> list[Sample]:
        """The Samples of `rows` (plan rows), in order; malformed rows are skipped (see self.stats)."""
        return self.samples_of([plan.row_id(r) for r in rows])

    def samples_of(self, ids: Sequence[str]) -> list[Sample]:
        """The Samples of ids `<subset>#<row>`, in order; malformed rows are skipped (see self.stats).
        Rows are fetched sorted by (subset, row), so each row group is read once per call."""
        keys: dict[str, tuple[str, int]] = {}
        for row_id in ids:
            name, _, index = row_id.rpartition("#")
            if not name or not index.isdigit():
                raise InterlaceError(f"data plan id {row_id!r} is not <subset>#<row>")
            keys[row_id] = (name, int(index))
        raw = {row_id: self.row(*key) for row_id, key in sorted(keys.items(), key=lambda kv: kv[1])}
        out = []
        for row_id in ids:
            row, base = raw[row_id]
            s = row_to_sample(row, self.spec, source=row_id, base_dir=base, stats=self.stats)
            if s is not None:
                out.append(s)
        return out

    def row(self, subset: str, index: int) -> tuple[Any, Path | None]:
        """The raw row `index` of `subset` and the directory its relative image paths start from."""
        if subset not in self.subsets:
            raise InterlaceError(f"data plan names subset {subset!r}, which {self.spec.path!r} does not have")
        sub = self.subsets[subset]
        if sub.hub_id:
            return self._hub_row(sub, index), None
        pieces = self._index(sub)
        p = self._piece(pieces, subset, index)
        local = index - p.start
        assert isinstance(p.path, Path)
        if p.kind == "parquet":
            return self._row_group(p)[local], p.path.parent
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

    @staticmethod
    def _piece(pieces: list[_Piece], subset: str, index: int) -> _Piece:
        k = bisect.bisect_right([p.start for p in pieces], index) - 1
        if k < 0 or index >= pieces[k].start + pieces[k].count:
            raise InterlaceError(f"data plan row {subset}#{index} is past the end of the subset")
        return pieces[k]

    # ------------------------------------------------------------------------------ hub subsets
    def _hub_row(self, sub: Subset, index: int) -> Any:
        cached = self._cached_path(sub, index)
        if cached is not None and cached.is_file():
            import pyarrow.parquet as pq

            return pq.read_table(cached).to_pylist()[0]
        p = self._piece(self._hub_index(sub, index), sub.name, index)
        rows = self._row_group(p)
        keep = self._keep.get(sub.name)
        if keep and cached is not None:
            self._cache_group(sub, p, rows, keep)
        return rows[index - p.start]

    def _hub_index(self, sub: Subset, index: int) -> list[_Piece]:
        """The pieces of `sub` covering at least rows 0..index: footers read in file order, lazily."""
        import pyarrow.parquet as pq

        from interlace.data.hubfiles import hub_filesystem, subset_files

        assert sub.hub_id is not None
        if self._fs is None:
            self._fs = hub_filesystem(sub.hub_id)
        fs, root = self._fs
        hub = self._hub.get(sub.name)
        if hub is None:
            files = subset_files(fs, root, sub.hub_id, sub.name, sub.split, where=self.where)
            hub = self._hub[sub.name] = _HubIndex(files=files)
        while hub.rows <= index and hub.next_file < len(hub.files):
            path = hub.files[hub.next_file]
            try:
                with fs.open(path, "rb") as fh:
                    meta = pq.ParquetFile(fh).metadata
            except Exception as err:
                raise TransientError(
                    f"{self.where}.path: cannot read the parquet footer of {path} ({type(err).__name__}: "
                    f"{err}); check your network and HF_TOKEN"
                ) from None
            for g in range(meta.num_row_groups):
                n = meta.row_group(g).num_rows
                hub.pieces.append(_Piece(hub.rows, n, path, "parquet", group=g, fs=fs, meta=meta))
                hub.rows += n
            hub.next_file += 1
        return hub.pieces

    def _cached_path(self, sub: Subset, index: int) -> Path | None:
        if not self._keep.get(sub.name) or index not in self._keep[sub.name]:
            return None
        import hashlib

        root = self._cache_dir if self._cache_dir is not None else hub_cache_root()
        # subset names hold characters like "(" and "+": a readable prefix and a hash keep paths safe
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in sub.name)
        tag = hashlib.sha256(f"{sub.hub_id}\0{sub.split}\0{sub.name}".encode()).hexdigest()[:8]
        return root / str(sub.hub_id).replace("/", "--") / sub.split / f"{safe}-{tag}" / f"{index}.parquet"

    def _cache_group(self, sub: Subset, p: _Piece, rows: list[dict[str, Any]], keep: set[int]) -> None:
        """Write the planned rows of a fetched row group to the row cache (atomically, one file each)."""
        import os

        import pyarrow as pa
        import pyarrow.parquet as pq

        table: Any = None
        for local in range(p.count):
            index = p.start + local
            target = self._cached_path(sub, index) if index in keep else None
            if target is None or target.is_file():
                continue
            if table is None:
                schema = p.meta.schema.to_arrow_schema()
                table = pa.Table.from_pylist(rows, schema=schema)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            pq.write_table(table.slice(local, 1), tmp)
            os.replace(tmp, target)

    # ------------------------------------------------------------------------------ local subsets
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

    def _row_group(self, p: _Piece) -> list[dict[str, Any]]:
        key = (str(p.path), p.group)
        rows = self._groups.get(key)
        if rows is None:
            import pyarrow.parquet as pq

            if p.fs is None:
                rows = pq.ParquetFile(p.path).read_row_group(p.group).to_pylist()
            else:
                try:
                    with p.fs.open(p.path, "rb") as fh:
                        rows = pq.ParquetFile(fh, metadata=p.meta).read_row_group(p.group).to_pylist()
                except Exception as err:
                    raise TransientError(
                        f"{self.where}.path: cannot read row group {p.group} of {p.path} "
                        f"({type(err).__name__}: {err}); check your network and HF_TOKEN"
                    ) from None
                self.groups_fetched.append(key)
            self._groups[key] = rows
            while len(self._groups) > _ROW_GROUP_CACHE:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(key)
        return rows
