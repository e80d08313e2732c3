"""A rank's micro-batches under a data plan, read, decoded and encoded by DataLoader worker processes.

`plan_micro_batches(spec, plan, processor, rank, world, skip=..., num_workers=...)` yields this rank's
collated micro-batches, in training order, from sample position `skip` (a checkpoint's
samples_consumed). It is a torch DataLoader over a map-style dataset, `RankMicroBatches`, whose item
`i` is the i-th micro-batch of this rank from `skip`: the rows of slice `rank` of the global
micro-batch at position `skip + i * B * world` of the plan's order (DataPlan.rank_rows), read by
index (RowReader), their images decoded, each row encoded (encode_sample) and the slice collated
(collate). Nothing before `skip` and nothing of another rank's slices is read.

* Order: the sampler is 0, 1, 2, ... and DataLoader returns a map-style dataset's items in sampler
  order whatever the number of workers (worker k computes items k, k + n, ..., and the main process
  hands them out in index order), so the sequence is the same for num_workers 0 and n.
* Prefetch: each worker keeps `prefetch_factor` items in flight, so reading, decoding and encoding of
  the next micro-batches overlap the training step. With `pin_memory` (CUDA) the batches arrive in
  page-locked memory, and the step copies them to the GPU with non_blocking=True.
* num_workers 0: the same dataset, item by item, in the training process (no worker process).
* Worker processes: the dataset pickles its spec, plan and processor; each worker makes its own
  RowReader (and row-group cache) on first use. torch gives each worker one intra-op thread.
* A slice none of whose rows can be encoded (EncodeError, e.g. image tokens cut by maxLength) sends
  the previous good example again with every label masked, as the in-process loop always did: it
  adds nothing to the loss, but keeps this rank in step with the others. The item looks back
  through the previous slices of this rank (re-reading them, never before `skip`) for the last
  encodable example, so the result does not depend on which worker made the previous item. No good
  example since `skip`: InterlaceError.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from interlace.data.dataplan import DataPlan
from interlace.data.sample import Sample
from interlace.errors import InterlaceError
from interlace.schema.spec import FinetuneSpec

if TYPE_CHECKING:
    from interlace.data.reader import RowReader

log = logging.getLogger(__name__)

MicroBatch = tuple[dict[str, Any], int]  # (collated batch, number of real tokens)
PREFETCH_FACTOR = 2  # micro-batches in flight per worker (torch's default)


def encode_slice(
    samples: list[Sample], processor: Any, *, max_length: int, warn: bool = True
) -> list[dict[str, Any]]:
    """The encodable examples of one slice, in order; an EncodeError skips the sample (logged)."""
    from interlace.data.encode import EncodeError, encode_sample

    out = []
    for s in samples:
        try:
            out.append(encode_sample(s, processor, max_length=max_length))
        except EncodeError as err:
            if warn:
                log.warning("finetune: skipped sample %s: %s", s.source, err)
    return out


def masked(example: dict[str, Any]) -> dict[str, Any]:
    """`example` with every label -100: a stand-in that adds nothing to the loss."""
    import torch

    from interlace.data.encode import IGNORE_INDEX

    return {**example, "labels": torch.full_like(example["labels"], IGNORE_INDEX)}


@dataclass(frozen=True)
class Packing:
    """How `spec.finetune.packing` packs this model's micro-batches (picklable: it travels to the
    DataLoader workers). positions: the family's per-sample positions
    (interlace.models.packing.sample_positions; None: a batch with images is padded, logged once);
    max_length: the row length (None: one row, as flash-attention-2 needs to keep samples apart)."""

    positions: Any = None
    max_length: int | None = None


def collate_slice(
    examples: list[dict[str, Any]], processor: Any, spec: FinetuneSpec, packing: Packing | None = None
) -> MicroBatch:
    """(collated batch, real tokens) of a slice's examples, as training feeds them."""
    from interlace.data.chat import tokenizer_of
    from interlace.data.encode import collate

    packing = packing if packing is not None else Packing(max_length=spec.max_length)
    tokenizer = tokenizer_of(processor)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n_tokens = sum(int(ex["input_ids"].shape[0]) for ex in examples)
    batch = collate(
        examples, pad_id, packing=spec.packing, max_length=packing.max_length, positions=packing.positions
    )
    return batch, n_tokens


FIRST_UNENCODABLE = "spec.finetune.data: the first samples cannot be encoded for this model"


class RankMicroBatches:
    """Map-style dataset: item i is rank `rank`'s i-th micro-batch from sample position `skip`.

    Picklable (DataLoader worker processes): the RowReader is made on first use in each process."""

    def __init__(
        self, spec: FinetuneSpec, plan: DataPlan, processor: Any, rank: int, world: int, *, skip: int,
        packing: Packing | None = None,
    ) -> None:
        self.spec, self.plan, self.processor, self.packing = spec, plan, processor, packing
        self.rank, self.world, self.skip = rank, world, skip
        self._reader: RowReader | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_reader": None}

    @property
    def reader(self) -> RowReader:
        if self._reader is None:
            from interlace.data.reader import RowReader

            self._reader = RowReader(self.spec.data, where="spec.finetune.data", plan=self.plan)
        return self._reader

    def position(self, i: int) -> int:
        """The global sample position of item i's global micro-batch."""
        return self.skip + i * self.spec.per_device_batch_size * self.world

    def samples(self, i: int) -> list[Sample]:
        """Item i's samples (its rows read and decoded)."""
        (rows,) = self.plan.rank_rows(
            self.rank, self.world, self.spec.per_device_batch_size, self.position(i), 1
        )
        return self.reader.samples(self.plan, rows)

    def __getitem__(self, i: int) -> MicroBatch:
        max_length = self.spec.max_length
        examples = encode_slice(self.samples(i), self.processor, max_length=max_length)
        if not examples:
            for j in range(i - 1, -1, -1):  # the last good example of this rank since `skip`
                before = encode_slice(self.samples(j), self.processor, max_length=max_length, warn=False)
                if before:
                    examples = [masked(before[-1])]
                    break
            else:
                raise InterlaceError(FIRST_UNENCODABLE)
        return collate_slice(examples, self.processor, self.spec, self.packing)


def _identity(item: Any) -> Any:
    """batch_size=None: the item as the dataset made it (already collated)."""
    return item


def plan_micro_batches(
    spec: FinetuneSpec,
    plan: DataPlan,
    processor: Any,
    rank: int,
    world: int,
    *,
    skip: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    packing: Packing | None = None,
) -> Generator[MicroBatch, None, None]:
    """This rank's micro-batches from position `skip`, forever (see the module docstring). Nothing
    starts (no worker, no read) before the first `next`; `close()` stops the workers."""
    from torch.utils.data import DataLoader

    ds = RankMicroBatches(spec, plan, processor, rank, world, skip=skip, packing=packing)
    loader: DataLoader[MicroBatch] = DataLoader(
        ds,  # type: ignore[arg-type]  # map-style: __getitem__ only (the sampler is unbounded)
        batch_size=None,
        sampler=itertools.count(),
        num_workers=num_workers,
        prefetch_factor=PREFETCH_FACTOR if num_workers > 0 else None,
        collate_fn=_identity,
        pin_memory=pin_memory,
    )
    yield from loader
    raise AssertionError("the micro-batch sampler is unbounded")


def loader_workers(cpus: float | None, *, available: int | None = None) -> int:
    """DataLoader workers for a training process given `cpus` CPUs (spec.resources.cpu per GPU
    process): all but one, which the training process keeps; capped by the CPUs this process may
    run on (`available`, default os.sched_getaffinity). None or < 2 CPUs: 0 (read in-process)."""
    import math
    import os

    if cpus is None:
        return 0
    if available is None:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(math.floor(cpus), available) - 1)
