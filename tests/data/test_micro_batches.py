"""The finetune loop's micro-batches under a data plan (interlace.stages.finetune.batches): DataLoader
worker processes read, decode and encode a rank's rows ahead of the step, in exactly the in-process
order, from the resume position on, never another rank's rows. Tiny: FineVision-schema shards with
real PNGs, the tiny Qwen3-VL processor, no Ray."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

from interlace.data.dataplan import DataPlan, build_plan
from interlace.data.reader import RowReader
from interlace.errors import InterlaceError
from interlace.schema.spec import DataSpec, FinetuneSpec
from interlace.stages.finetune.batches import RankMicroBatches, loader_workers, plan_micro_batches
from tests.fixtures.finevision import FineVisionShards, write_finevision_shards
from tests.fixtures.tiny import tiny, tiny_tokenizer

B = 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> FineVisionShards:
    return write_finevision_shards(tmp_path_factory.mktemp("fvbatches"), {"alpha": 40, "beta": 30})


@pytest.fixture(scope="module")
def processor() -> Any:
    return tiny("qwen3_vl")[1]


def _setup(shards: FineVisionShards, batch: int = B) -> tuple[FinetuneSpec, DataPlan]:
    data = DataSpec(path=str(shards.root), fraction=1.0, seed=5, max_images=8)
    return FinetuneSpec(data=data, per_device_batch_size=batch, max_length=2048), build_plan(data)


def _take(it: Any, n: int) -> list[tuple[dict[str, Any], int]]:
    out = [next(it) for _ in range(n)]
    it.close()  # stops the workers
    return out


def _same(a: list[tuple[dict[str, Any], int]], b: list[tuple[dict[str, Any], int]]) -> None:
    assert len(a) == len(b)
    for (x, nx), (y, ny) in zip(a, b, strict=True):
        assert nx == ny and x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


@pytest.fixture
def reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every RowReader.row call appends `<subset>#<row>` to a file: the DataLoader workers are forked
    processes, so a list in this process would not see their reads."""
    log = tmp_path / "reads.txt"
    real = RowReader.row

    def counting(self: RowReader, subset: str, index: int) -> Any:
        with log.open("a") as fh:
            fh.write(f"{subset}#{index}\n")
        return real(self, subset, index)

    monkeypatch.setattr(RowReader, "row", counting)
    return log


def _read(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def test_two_workers_give_the_in_process_micro_batches_in_order(
    shards: FineVisionShards, processor: Any
) -> None:
    spec, plan = _setup(shards)
    inline = _take(plan_micro_batches(spec, plan, processor, 1, 2, skip=4, num_workers=0), 6)
    workers = _take(plan_micro_batches(spec, plan, processor, 1, 2, skip=4, num_workers=2), 6)
    _same(workers, inline)
    # and they are this rank's slices of the plan's order: the row ids are in the user turns
    tok = processor.tokenizer
    for (batch, _), rows in zip(inline, plan.rank_rows(1, 2, B, 4, 6), strict=True):
        text = tok.decode(batch["input_ids"].flatten())
        assert all(f"[{plan.row_id(r)}]" in text for r in rows)


def test_a_resume_yields_the_tail_and_reads_nothing_before_its_position(
    shards: FineVisionShards, processor: Any, reads: Path
) -> None:
    spec, plan = _setup(shards)
    world, rank, n, k = 2, 1, 6, 2  # resume after k micro-batches: position p = k * B * world
    p = k * B * world
    full = _take(plan_micro_batches(spec, plan, processor, rank, world, skip=0, num_workers=2), n)
    reads.unlink()
    resumed = _take(plan_micro_batches(spec, plan, processor, rank, world, skip=p, num_workers=2), n - k)
    _same(resumed, full[k:])
    got = set(_read(reads))
    before = {plan.row_id(plan.at(q)) for q in range(p)}
    assert got and not got & before
    # only this rank's slices from p on (prefetch reads a few micro-batches ahead, still its own)
    mine = {plan.row_id(r) for rows in plan.rank_rows(rank, world, B, p, n - k + 8) for r in rows}
    assert got <= mine


def test_two_ranks_never_read_the_same_row(shards: FineVisionShards, processor: Any, reads: Path) -> None:
    spec, plan = _setup(shards)
    per_rank = []
    for rank in (0, 1):
        _take(plan_micro_batches(spec, plan, processor, rank, 2, skip=0, num_workers=2), 4)
        per_rank.append(_read(reads))
        reads.unlink()
    a, b = per_rank
    assert a and b and not set(a) & set(b)
    assert len(a) == len(set(a)) and len(b) == len(set(b))  # no row read twice by one rank either


def test_an_unencodable_slice_repeats_the_previous_good_example_masked(shards: FineVisionShards) -> None:
    """A text-only tokenizer cannot encode rows with images (EncodeError): with one row per slice,
    each such slice is the last text-only row before it with every label -100, for any number of
    workers (the item looks back through this rank's slices, never before `skip`)."""
    tok = tiny_tokenizer()
    spec, plan = _setup(shards, batch=1)
    has_images = [bool(shards.rows[plan.subsets[s].name][r]["images"]) for s, r in plan.order(0)]
    start = has_images.index(False)
    n = 12
    assert any(has_images[start : start + n]) and not all(has_images[start : start + n])
    inline = _take(plan_micro_batches(spec, plan, tok, 0, 1, skip=start, num_workers=0), n)
    _same(_take(plan_micro_batches(spec, plan, tok, 0, 1, skip=start, num_workers=2), n), inline)
    last_good = None
    for i, (batch, _) in enumerate(inline):
        if has_images[start + i]:
            assert last_good is not None and torch.equal(batch["input_ids"], last_good)
            assert bool((batch["labels"] == -100).all())
        else:
            assert bool((batch["labels"] != -100).any())
            last_good = batch["input_ids"]
    # a resume whose first slice cannot be encoded has no good example to repeat (nothing before
    # `skip` is read): an error, also when it is raised in a worker process
    first_bad = has_images.index(True, start)
    for workers in (0, 2):
        with pytest.raises(InterlaceError, match="first samples cannot be encoded"):
            next(plan_micro_batches(spec, plan, tok, 0, 1, skip=first_bad, num_workers=workers))


def test_the_dataset_pickles_without_its_reader(shards: FineVisionShards, processor: Any) -> None:
    """Workers started with spawn/forkserver get the dataset pickled: the reader is made per process."""
    spec, plan = _setup(shards)
    ds = RankMicroBatches(spec, plan, processor, 0, 2, skip=8)
    first = ds[0]
    assert ds._reader is not None
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._reader is None
    _same([copy[0]], [first])


def test_loader_workers_leave_one_cpu_for_training() -> None:
    from interlace.runtime.placement import loader_cpus
    from interlace.schema.spec import ResourcesSpec

    assert loader_workers(loader_cpus(ResourcesSpec(cpu="16", gpus_per_worker=1)), available=64) == 15
    assert loader_workers(loader_cpus(ResourcesSpec(cpu=16, gpus_per_worker=4)), available=64) == 3
    assert loader_workers(loader_cpus(ResourcesSpec(cpu="16", gpus_per_worker=1)), available=4) == 3
    assert loader_workers(loader_cpus(ResourcesSpec(cpu="1500m", gpus_per_worker=1)), available=64) == 0
    assert loader_cpus(ResourcesSpec(cpu="8", gpus_per_worker=0)) is None  # CPU workers: in-process
    assert loader_workers(None) == 0
