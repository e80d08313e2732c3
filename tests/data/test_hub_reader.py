"""Hub sources follow the data plan: planned rows read by index from the hub's parquet files.

The hub is a local directory laid out like HuggingFaceM4/FineVision's repository
(`<subset>/train-0000k-of-0000n.parquet`, FineVision's schema) behind fsspec's local file system,
put where interlace.data.hubfiles.hub_filesystem would give HfFileSystem. No network.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem

from interlace.data.dataplan import build_plan
from interlace.data.reader import RowReader, plan_readable
from interlace.errors import InterlaceError
from interlace.schema.spec import DataSpec
from tests.fixtures.finevision import FineVisionShards, write_finevision_shards

FV = "HuggingFaceM4/FineVision"
SIZES = {"chartqa": 24, "coco_colors": 40, "geo170k(qa)": 18}  # a name with "(" as FineVision has


class CountingFS(LocalFileSystem):
    """fsspec's local file system, counting what is opened (footers and row groups are read through it)."""

    def __init__(self, *a: Any, **k: Any) -> None:
        super().__init__(*a, **k)
        self.opened: Counter[str] = Counter()

    def _open(self, path: str, *a: Any, **k: Any) -> Any:
        self.opened[Path(path).name if "/" not in path else "/".join(Path(path).parts[-2:])] += 1
        return super()._open(path, *a, **k)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> FineVisionShards:
    return write_finevision_shards(tmp_path_factory.mktemp("hubrepo"), SIZES, shards=3, row_group_size=4)


@pytest.fixture
def hub(repo: FineVisionShards, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CountingFS:
    """FineVision online, sized by a table of the fixture's sizes, its files in `repo`."""
    from interlace.data import hubfiles, reader, sources

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sources, "finevision_table", lambda: dict(SIZES))
    monkeypatch.setattr(sources, "_hub_split_rows", lambda *a: pytest.fail("asked the hub's metadata"))
    fs = CountingFS(skip_instance_cache=True)  # fsspec caches instances: a fresh count per test
    monkeypatch.setattr(hubfiles, "hub_filesystem", lambda hub_id: (fs, str(repo.root)))
    monkeypatch.setattr(reader, "hub_cache_root", lambda: tmp_path / "hub-rows")
    monkeypatch.setattr("interlace.data.loader._hub_stream", lambda *a: pytest.fail("streamed the hub"))
    return fs


def _group_of(repo: FineVisionShards, subset: str, index: int) -> tuple[str, int]:
    """(file, row group) holding row `index` of `subset` in the fixture (4-row groups per file)."""
    start = 0
    for f in repo.files[subset]:
        import pyarrow.parquet as pq

        n = pq.read_metadata(f).num_rows
        if index < start + n:
            return str(f), (index - start) // 4
        start += n
    raise AssertionError(index)


def test_hub_plan_ranks_read_their_rows_in_plan_order_and_only_their_row_groups(
    hub: CountingFS, repo: FineVisionShards, monkeypatch: pytest.MonkeyPatch
) -> None:
    import interlace.data.loader as loader

    decoded: list[str] = []
    real = loader.finevision_row_to_sample

    def counting(row, **kw):  # type: ignore[no-untyped-def]
        decoded.append(kw["source"])
        return real(row, **kw)

    monkeypatch.setattr(loader, "finevision_row_to_sample", counting)
    spec = DataSpec(fraction=0.5, sampling="random", seed=3, max_images=8)  # FineVision, every subset
    assert plan_readable(spec)
    plan = build_plan(spec)
    assert plan.num_finetune == 12 + 20 + 9
    B, world, steps = 2, 3, 6  # 36 positions of the 41 rows
    seen: Counter[str] = Counter()
    for rank in range(world):
        decoded.clear()
        reader = RowReader(spec)  # no plan: nothing cached, every row group it needs is fetched
        for rows in plan.rank_rows(rank, world, B, 0, steps):
            samples = reader.samples(plan, rows)
            ids = [plan.row_id(r) for r in rows]
            assert [s.source for s in samples] == ids  # the plan's order
            assert all(s.turns[0].text.startswith(f"[{s.source}]") for s in samples)  # the very row
            seen.update(ids)
        mine = [i for rows in plan.rank_rows(rank, world, B, 0, steps) for i in (plan.row_id(r) for r in rows)]
        assert decoded == mine  # only its planned rows are decoded
        wanted = {_group_of(repo, name, int(i)) for name, _, i in (x.rpartition("#") for x in mine)}
        assert set(reader.groups_fetched) == wanted  # only the row groups holding them
    assert sum(seen.values()) == 36 and max(seen.values()) == 1  # two ranks never read the same row


def test_first_percent_reads_footers_only_as_far_as_its_rows_and_caches_planned_rows(
    hub: CountingFS, repo: FineVisionShards
) -> None:
    spec = DataSpec(subsets=["coco_colors"], fraction=0.25, max_images=8)  # rows 0..9: the first file
    plan = build_plan(spec)
    assert plan.subsets[0].finetune == list(range(10))
    reader = RowReader(spec, plan=plan)
    got = reader.samples(plan, plan.order(0))
    assert sorted(s.source for s in got) == sorted(f"coco_colors#{i}" for i in range(10))
    files = [f.name for f in repo.files["coco_colors"]]  # 13, 14, 13 rows
    assert hub.opened[f"coco_colors/{files[0]}"] > 0
    assert hub.opened[f"coco_colors/{files[1]}"] == 0 and hub.opened[f"coco_colors/{files[2]}"] == 0
    assert len(reader.groups_fetched) == 3  # rows 0-3, 4-7, 8-9 of the first file, each once
    # A second reader on this machine (another rank, a restart) finds the planned rows in the cache.
    again = RowReader(spec, plan=plan)
    assert [s.source for s in again.samples(plan, plan.order(0))] == [s.source for s in got]
    assert again.groups_fetched == []


def test_shared_row_cache_fetches_each_row_group_once_across_ranks(hub: CountingFS, repo: FineVisionShards) -> None:
    spec = DataSpec(fraction=1.0, seed=1, max_images=8)
    plan = build_plan(spec)
    fetched: list[tuple[str, int]] = []
    for rank in range(2):
        reader = RowReader(spec, plan=plan)
        for rows in plan.rank_rows(rank, 2, 3, 0, 82 // 6):
            reader.samples(plan, rows)
        fetched += reader.groups_fetched
    assert len(fetched) == len(set(fetched))  # the training order visits a group's rows far apart


def test_hub_resume_starts_at_its_position(hub: CountingFS, monkeypatch: pytest.MonkeyPatch) -> None:
    """The finetune loop's data path on a hub source: a rank resuming at position 12 decodes exactly
    its slices of the following global micro-batches, read by index from the hub's files."""
    import interlace.data.loader as loader
    from interlace.schema.spec import FinetuneSpec
    from interlace.stages.finetune.loop import WorkerConfig, _rank_samples

    decoded: list[str] = []
    real = loader.finevision_row_to_sample

    def counting(row, **kw):  # type: ignore[no-untyped-def]
        decoded.append(kw["source"])
        return real(row, **kw)

    monkeypatch.setattr(loader, "finevision_row_to_sample", counting)
    data = DataSpec(fraction=1.0, seed=2, max_images=8)
    plan = build_plan(data)
    config = WorkerConfig.model_construct(spec=FinetuneSpec(data=data, per_device_batch_size=2), samples=None, data_plan=plan)
    it = _rank_samples(config, 1, 3, skip=12)
    got = [[s.source for s in next(it)] for _ in range(3)]
    want = [[plan.row_id(r) for r in rows] for rows in plan.rank_rows(1, 3, 2, 0, 5)[2:5]]
    assert got == want and decoded == [i for rows in want for i in rows]


def test_hub_rows_are_the_rows_of_the_same_files_read_locally(hub: CountingFS, repo: FineVisionShards) -> None:
    spec = DataSpec(fraction=1.0, max_images=8)
    plan = build_plan(spec)
    ids = [plan.row_id(r) for r in plan.order(0)]
    remote = RowReader(spec).samples_of(ids)
    local = RowReader(DataSpec(path=str(repo.root), fraction=1.0, max_images=8)).samples_of(ids)
    assert [(s.source, [(t.role, t.text) for t in s.turns]) for s in remote] == [
        (s.source, [(t.role, t.text) for t in s.turns]) for s in local
    ]


def test_unlistable_subset_is_a_clear_error_not_a_stream(
    hub: CountingFS, repo: FineVisionShards, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import shutil

    from interlace.data import hubfiles

    partial = tmp_path / "repo"
    shutil.copytree(repo.root, partial)
    shutil.rmtree(partial / "geo170k(qa)")
    monkeypatch.setattr(hubfiles, "hub_filesystem", lambda hub_id: (hub, str(partial)))
    spec = DataSpec(fraction=1.0, max_images=8)
    plan = build_plan(spec)
    reader = RowReader(spec, where="spec.finetune.data")
    # before any GPU time: the pipeline and the driver list every planned hub subset's files
    from interlace.data.reader import check_hub_files

    with pytest.raises(InterlaceError, match=r"spec\.finetune\.data\.path: subset 'geo170k\(qa\)' .* no parquet"):
        check_hub_files(spec, plan, where="spec.finetune.data")
    check_hub_files(DataSpec(subsets=["chartqa", "coco_colors"], fraction=1.0), build_plan(DataSpec(
        subsets=["chartqa", "coco_colors"], fraction=1.0)))
    with pytest.raises(
        InterlaceError,
        match=r"spec\.finetune\.data\.path: subset 'geo170k\(qa\)' of 'HuggingFaceM4/FineVision' has no parquet "
        r"files for split 'train'",
    ):
        reader.samples_of(["geo170k(qa)#0"])
    assert reader.samples_of(["chartqa#0"])[0].source == "chartqa#0"

    class Down(LocalFileSystem):
        def ls(self, *a: Any, **k: Any) -> Any:
            raise ConnectionError("hub down")

    monkeypatch.setattr(hubfiles, "hub_filesystem", lambda hub_id: (Down(skip_instance_cache=True), str(partial)))
    with pytest.raises(InterlaceError, match=r"data\.path: cannot list the parquet files of subset 'chartqa'.*hub down"):
        RowReader(spec).samples(plan, [(0, 0)])
