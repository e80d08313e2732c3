"""The data plan: which rows finetuning and calibration read, and in which order, as ids only.

Computed once, before any worker, from the subset table (parquet footers, line counts, the shipped
FineVision table): no row is read and no image decoded. Pure: the same spec and the same source give
the same plan on every rank and on every restart.

* Finetuning rows per subset: the DataSpec's own choice (`fraction`, `sampling: first|random`, `seed`,
  `maxSamples` shared in proportion), exactly the rows `interlace.data.loader.plan` picks.
* Training order: all finetuning rows shuffled across subsets with a generator seeded by
  (`data.seed`, epoch): epoch e has its own order (as a map-style dataset under a shuffling sampler),
  so no global batch comes from one subset and the cosine tail is not the last subsets of the table.
  Position p of the run is row `order(p // N)[p % N]` (N rows in an epoch); a resume starts at its
  checkpointed position and reads nothing before it.
* Calibration rows: `n` rows drawn from the finetuning rows (the paper: `random.sample` of 10% of the
  prepared 1% set), spread over the subsets in proportion to their finetuning rows (largest remainder),
  each subset's share drawn with a generator seeded by (calibration seed, subset), then put in one
  seeded random order (batches mix subsets).

Ids are `<subset>#<row>` (row = 0-based index within the subset, as `Sample.source` uses).
`interlace.data.reader` reads rows by id; `interlace data` prints a plan; the pipeline writes it to
the run's artifacts as `data_plan.json`.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

from interlace.data.sampling import share_cap, subset_seed
from interlace.errors import InterlaceError
from interlace.schema.spec import DataSpec, PruneJobSpec

Row = tuple[int, int]  # (subset index in DataPlan.subsets, row within the subset)


@dataclass
class SubsetRows:
    """One subset of the plan: its size, its finetuning rows (sorted) and its calibration rows."""

    name: str
    num_rows: int
    finetune: list[int]
    calibration: list[int] = field(default_factory=list)


@dataclass
class DataPlan:
    """Ids only. `order(epoch)` is the training order, `calibration` the calibration rows in order."""

    source: str
    seed: int
    subsets: list[SubsetRows]
    calibration_seed: int = 0
    calibration: list[Row] = field(default_factory=list)
    _orders: dict[int, list[Row]] = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ sizes and ids
    @property
    def num_finetune(self) -> int:
        return sum(len(s.finetune) for s in self.subsets)

    def row_id(self, row: Row) -> str:
        return f"{self.subsets[row[0]].name}#{row[1]}"

    def order(self, epoch: int = 0) -> list[Row]:
        """The training rows of `epoch` in training order (a seeded shuffle across subsets)."""
        if epoch not in self._orders:
            rows = [(i, r) for i, s in enumerate(self.subsets) for r in s.finetune]
            random.Random(subset_seed(self.seed, f"order:{epoch}")).shuffle(rows)
            self._orders = {epoch: rows}  # keep one epoch: a run moves through them in order
        return self._orders[epoch]

    def at(self, position: int) -> Row:
        """The row trained at global sample position `position` (wrapping into later epochs)."""
        n = self.num_finetune
        if n == 0:
            raise InterlaceError("the data plan has no finetuning rows")
        return self.order(position // n)[position % n]

    def rank_rows(self, rank: int, world: int, batch: int, start: int, count: int) -> list[list[Row]]:
        """`count` micro-batches of rank `rank`: slice [rank*batch, (rank+1)*batch) of each global
        micro-batch of `batch * world` positions, the first global micro-batch starting at `start`."""
        out = []
        for m in range(count):
            base = start + m * batch * world + rank * batch
            out.append([self.at(p) for p in range(base, base + batch)])
        return out

    # ------------------------------------------------------------------ artifact
    def to_wire(self, *, head: int | None = None) -> dict[str, Any]:
        """The JSON artifact (data_plan.json). `head`: list only the first `head` training ids."""
        order = self.order(0)
        shown = order if head is None else order[:head]
        return {
            "source": self.source,
            "seed": self.seed,
            "calibrationSeed": self.calibration_seed,
            "numFinetune": self.num_finetune,
            "numCalibration": len(self.calibration),
            "fingerprint": self.fingerprint(),
            "finetuneFingerprint": self.finetune_fingerprint(),
            "subsets": [
                {
                    "name": s.name,
                    "numRows": s.num_rows,
                    "finetune": len(s.finetune),
                    "calibration": len(s.calibration),
                }
                for s in self.subsets
            ],
            "order": "epoch e: the finetuning rows shuffled by random.Random(subset_seed(seed, f'order:{e}'))",
            "trainingIds": [self.row_id(r) for r in shown],
            "calibrationIds": [self.row_id(r) for r in self.calibration],
        }

    def finetune_fingerprint(self) -> str:
        """sha256 over what decides which row is trained at each position: the source, the seed (the
        order) and each subset's size and finetuning rows; not the calibration rows. Checkpoints record
        it, so a resume with another plan is refused (interlace.stages.finetune.checkpoint)."""
        h = hashlib.sha256()
        h.update(json.dumps(["finetune", self.source, self.seed]).encode())
        for s in self.subsets:
            h.update(json.dumps([s.name, s.num_rows, s.finetune]).encode())
        return h.hexdigest()[:16]

    def fingerprint(self) -> str:
        """sha256 over the rows, the first epoch's order and the calibration rows."""
        h = hashlib.sha256()
        h.update(json.dumps([self.source, self.seed, self.calibration_seed]).encode())
        for s in self.subsets:
            h.update(json.dumps([s.name, s.num_rows, s.finetune, s.calibration]).encode())
        h.update(json.dumps(self.order(0)).encode())
        h.update(json.dumps(self.calibration).encode())
        return h.hexdigest()[:16]


def build_plan(
    data: DataSpec,
    *,
    calibration: int = 0,
    calibration_seed: int | None = None,
    where: str = "data",
) -> DataPlan:
    """The plan of `data`: its finetuning rows, their order, and `calibration` calibration rows drawn
    from them (seeded by `calibration_seed`, default `data.seed`). Raises InterlaceError when a subset's
    size is unknown (a hub dataset without a row count): the plan needs every size."""
    from interlace.data.loader import plan as pick_rows

    picks = pick_rows(data, where=where)
    unknown = [p.subset.name for p in picks if p.indices is None or p.subset.num_rows is None]
    if unknown:
        raise InterlaceError(
            f"{where}.path: the row count of subset(s) {unknown[:10]}{' ...' if len(unknown) > 10 else ''} "
            f"of {data.path!r} is unknown, so no data plan can be made; download the subsets' parquet "
            f"shards and point {where}.path at them (local row counts are exact)"
        )
    subsets = [
        SubsetRows(name=p.subset.name, num_rows=int(p.subset.num_rows or 0), finetune=list(p.indices or []))
        for p in picks
    ]
    cal_seed = data.seed if calibration_seed is None else calibration_seed
    out = DataPlan(source=data.path, seed=data.seed, subsets=subsets, calibration_seed=cal_seed)
    if calibration > 0:
        out.calibration = _calibration(subsets, calibration, cal_seed)
    return out


def _calibration(subsets: list[SubsetRows], n: int, seed: int) -> list[Row]:
    quotas = share_cap([len(s.finetune) for s in subsets], n)
    rows: list[Row] = []
    for i, (s, q) in enumerate(zip(subsets, quotas, strict=True)):
        s.calibration = sorted(random.Random(subset_seed(seed, f"calibration:{s.name}")).sample(s.finetune, q))
        rows.extend((i, r) for r in s.calibration)
    random.Random(subset_seed(seed, "calibration-order")).shuffle(rows)
    return rows


@dataclass
class JobDataPlan:
    """A PruneJob's plans: finetuning, and calibration (the same plan when calibration.data is unset)."""

    finetune: DataPlan
    calibration: DataPlan

    def to_wire(self, *, head: int | None = None) -> dict[str, Any]:
        ft = self.finetune.to_wire(head=head)
        if self.calibration is self.finetune:
            return {"finetune": ft, "calibration": {"sameAsFinetune": True}}
        cal = self.calibration.to_wire(head=0)
        cal.pop("trainingIds")
        return {"finetune": ft, "calibration": cal}


def job_plan(spec: PruneJobSpec) -> JobDataPlan:
    """The data plan of a PruneJobSpec: spec.finetune.data's rows and order, and
    spec.calibration.numSamples calibration rows drawn from them (or from spec.calibration.data's own
    share when it is set to other data), seeded by the calibration data's seed."""
    cal = spec.calibration
    n = cal.num_samples
    if cal.data is None or cal.data == spec.finetune.data:
        p = build_plan(spec.finetune.data, calibration=n, where="spec.finetune.data")
        return JobDataPlan(p, p)
    ft = build_plan(spec.finetune.data, where="spec.finetune.data")
    return JobDataPlan(ft, build_plan(cal.data, calibration=n, where="spec.calibration.data"))
