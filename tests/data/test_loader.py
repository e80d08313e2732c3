"""load_samples on FineVision-schema parquet shards (through `datasets` streaming), jsonl and text."""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

import pytest

from interlace.data import DataStats, check_source, load_samples
from interlace.data.loader import _parquet_stream
from interlace.data.sampling import pick_indices, share_cap, subset_seed
from interlace.errors import InterlaceError
from interlace.schema.spec import DataSpec
from tests.fixtures.finevision import FineVisionShards, png, write_finevision_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> FineVisionShards:
    return write_finevision_shards(tmp_path_factory.mktemp("fv"), {"alpha": 40, "beta": 25}, seed=0)


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> FineVisionShards:
    return write_finevision_shards(tmp_path_factory.mktemp("fvbad"), {"gamma": 24}, seed=1, malformed=4)


def _ids(samples: list) -> list[str]:
    return [s.source for s in samples]


def test_fixture_writes_finevision_schema(shards: FineVisionShards) -> None:
    import pyarrow.parquet as pq

    schema = pq.read_schema(shards.files["alpha"][0])
    assert set(schema.names) == {
        "images", "texts", "source",
        "relevance_ratings", "relevance_min", "image_correspondence_ratings", "image_correspondence_min",
        "visual_dependency_ratings", "visual_dependency_min", "formatting_ratings", "formatting_min",
    }  # fmt: skip
    assert b"huggingface" in (schema.metadata or {})  # the datasets Image feature is declared
    counts = [len(r["images"]) for r in shards.rows["alpha"]]
    turns = [len(r["texts"]) for r in shards.rows["alpha"]]
    assert min(counts) == 0 and max(counts) == 4
    assert min(turns) == 1 and max(turns) == 7
    assert len(shards.files["alpha"]) == 2


def test_local_parquet_goes_through_datasets_streaming(shards: FineVisionShards) -> None:
    import datasets

    ds = _parquet_stream(shards.files["alpha"])
    assert isinstance(ds, datasets.IterableDataset)
    first = next(iter(ds))
    assert first["texts"][0]["user"].startswith("[alpha#0]")
    # decoding is off: images arrive as {bytes, path} and are decoded (and capped) by the loader
    assert all(isinstance(im, dict) and "bytes" in im for im in first["images"])


def test_first_sampling_takes_the_first_rows_of_each_subset(shards: FineVisionShards) -> None:
    spec = DataSpec(path=str(shards.root), fraction=0.25, max_images=4, max_turns=7)
    stats = DataStats()
    samples = list(load_samples(spec, stats=stats))
    # max(1, int(0.25 * 40)) = 10 rows of alpha, int(0.25 * 25) = 6 of beta, in stored order
    assert _ids(samples) == [f"alpha#{i}" for i in range(10)] + [f"beta#{i}" for i in range(6)]
    assert stats.rows_read == 16 and stats.samples == 16 and stats.skipped == {}
    for s in samples:
        name, idx = s.source.split("#")
        row = shards.rows[name][int(idx)]
        assert s.turns[0].text == row["texts"][0]["user"]
        assert [t.text for t in s.turns if t.role == "assistant"] == [t["assistant"] for t in row["texts"]]
        assert len(s.images) == len(row["images"])


def test_random_sampling_is_seeded_and_documented(shards: FineVisionShards) -> None:
    spec = DataSpec(path=str(shards.root), fraction=0.25, sampling="random", seed=7, max_images=4)
    got = _ids(list(load_samples(spec)))
    alpha = [6, 7, 12, 16, 21, 22, 28, 29, 31, 32]
    beta = [2, 3, 5, 14, 17, 24]
    assert got == [f"alpha#{i}" for i in alpha] + [f"beta#{i}" for i in beta]
    # the documented rule: random.Random(subset_seed(seed, subset)).sample(range(rows), k), sorted
    assert alpha == sorted(random.Random(subset_seed(7, "alpha")).sample(range(40), 10))
    assert got == _ids(list(load_samples(spec)))  # same seed, same rows
    other = _ids(list(load_samples(spec.model_copy(update={"seed": 8}))))
    assert other != got and len(other) == len(got)


def test_subset_selection_and_proportional_cap(shards: FineVisionShards) -> None:
    only_beta = DataSpec(path=str(shards.root), subsets=["beta"], fraction=0.2, max_images=4)
    assert _ids(list(load_samples(only_beta))) == [f"beta#{i}" for i in range(5)]
    capped = DataSpec(path=str(shards.root), fraction=1.0, max_samples=13, max_images=4, max_turns=7)
    ids = _ids(list(load_samples(capped)))
    # 13 shared 40:25 -> 8 and 5, each subset's first rows
    assert ids == [f"alpha#{i}" for i in range(8)] + [f"beta#{i}" for i in range(5)]
    assert share_cap([40, 25], 13) == [8, 5] and share_cap([3, 3, 3], 4) == [2, 1, 1]
    assert len(list(load_samples(capped, limit=3))) == 3


def test_malformed_rows_are_skipped_and_counted(broken: FineVisionShards) -> None:
    stats = DataStats()
    spec = DataSpec(path=str(broken.root), fraction=1.0, max_images=4, max_turns=7)
    samples = list(load_samples(spec, stats=stats))
    bad = broken.malformed["gamma"]
    assert sorted(bad.values()) == ["bad_texts", "bad_turn", "empty", "undecodable_image"]
    assert stats.rows_read == 24
    assert stats.skipped == {"bad_texts": 1, "bad_turn": 1, "undecodable_image": 1, "empty": 1}
    assert stats.samples == 20 == len(samples)
    assert {f"gamma#{i}" for i in bad}.isdisjoint(_ids(samples))


def test_too_many_images_skipped_and_turns_truncated(shards: FineVisionShards) -> None:
    stats = DataStats()
    spec = DataSpec(path=str(shards.root), subsets=["alpha"], fraction=1.0, max_images=2, max_turns=2)
    samples = list(load_samples(spec, stats=stats))
    rows = shards.rows["alpha"]
    expected_skip = sum(len(r["images"]) > 2 for r in rows)
    assert expected_skip > 0
    assert stats.skipped == {"too_many_images": expected_skip}
    assert len(samples) == 40 - expected_skip
    for s in samples:
        assert len(s.images) <= 2
        row = rows[int(s.source.split("#")[1])]
        want = [(t["user"], t["assistant"]) for t in row["texts"][:2]]
        got = [(s.turns[i].text, s.turns[i + 1].text) for i in range(0, len(s.turns), 2)]
        assert got == want
    assert any(len(r["texts"]) > 2 for r in rows)


def test_pixel_cap_keeps_aspect_ratio(shards: FineVisionShards) -> None:
    from PIL import Image

    spec = DataSpec(path=str(shards.root), subsets=["alpha"], fraction=1.0, max_images=4, max_pixels=1000)
    checked = 0
    for s in load_samples(spec):
        row = shards.rows["alpha"][int(s.source.split("#")[1])]
        for img, raw in zip(s.images, row["images"], strict=True):
            w0, h0 = Image.open(io.BytesIO(raw["bytes"])).size
            w, h = img.size
            assert w * h <= 1000 and img.mode == "RGB"
            if w0 * h0 <= 1000:
                assert (w, h) == (w0, h0)  # never upscaled or touched below the cap
            else:
                assert abs(w / h - w0 / h0) / (w0 / h0) < 0.15 or min(w, h) < 8
                checked += 1
    assert checked > 5


def test_jsonl_rows_paths_base64_system_and_broken_lines(tmp_path: Path) -> None:
    d = tmp_path / "mine"
    d.mkdir()
    (d / "pic.png").write_bytes(png(120, 80, "red", "circle"))
    b64 = base64.b64encode(png(30, 30, "blue", "square")).decode()
    rows = [
        {"images": ["pic.png"], "texts": [{"system": "Be terse.", "user": "What?", "assistant": "A circle."}]},
        {"images": [{"bytes": b64}], "texts": [{"user": "And?", "assistant": "A square."}]},
        {"images": [], "texts": "not a list"},
        {"images": [{"path": "missing.png"}], "texts": [{"user": "q", "assistant": "a"}]},
        {"texts": [{"user": "no images key", "assistant": "fine"}]},
        {"images": [], "texts": [{"user": 3, "assistant": "a"}]},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, "{this is not json")
    (d / "part-0.jsonl").write_text("\n".join(lines) + "\n")
    stats = DataStats()
    samples = list(load_samples(DataSpec(path=str(d), fraction=1.0), stats=stats))
    assert _ids(samples) == ["mine#0", "mine#1", "mine#5"]
    assert [(t.role, t.text) for t in samples[0].turns] == [
        ("system", "Be terse."), ("user", "What?"), ("assistant", "A circle."),
    ]  # fmt: skip
    assert samples[0].images[0].size == (120, 80) and samples[1].images[0].size == (30, 30)
    assert stats.skipped == {"bad_json": 1, "bad_texts": 1, "undecodable_image": 1, "bad_turn": 1}
    assert stats.rows_read == 7


def test_text_format_from_jsonl_and_txt(tmp_path: Path) -> None:
    d = tmp_path / "prose"
    d.mkdir()
    para = "The quick brown fox jumps over the lazy dog. Then it runs away into the dark forest."
    (d / "a.jsonl").write_text(json.dumps({"text": para}) + "\n" + json.dumps({"text": "one"}) + "\n")
    (d / "b.txt").write_text("First paragraph has words\nacross two lines.\n\nSecond one here too.\n")
    stats = DataStats()
    samples = list(load_samples(DataSpec(path=str(d), format="text", fraction=1.0), stats=stats))
    assert stats.skipped == {"too_short": 1} and len(samples) == 3
    s = samples[0]
    assert [t.role for t in s.turns] == ["user", "assistant"]
    assert s.turns[0].text == "The quick brown fox jumps over the lazy dog."
    assert s.turns[1].text == "Then it runs away into the dark forest."
    for s in samples:  # no word lost or added by the split
        assert s.turns[0].text and s.turns[1].text
    assert " ".join(t.text for t in samples[1].turns).split() == ["First", "paragraph", "has", "words", "across", "two", "lines."]
    with pytest.raises(InterlaceError, match="format: text"):
        check_source(DataSpec(path=str(d / "b.txt")))


def test_check_source_errors_are_clear(tmp_path: Path, shards: FineVisionShards) -> None:
    with pytest.raises(InterlaceError, match=r"data\.path: '/nonexistent/x' does not exist"):
        check_source(DataSpec(path="/nonexistent/x"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InterlaceError, match=r"data\.path: no shards"):
        check_source(DataSpec(path=str(tmp_path / "empty")))
    with pytest.raises(InterlaceError, match=r"spec\.finetune\.data\.subsets: unknown subset\(s\) \['delta'\].*alpha, beta"):
        check_source(DataSpec(path=str(shards.root), subsets=["delta"]), where="spec.finetune.data")
    bad = tmp_path / "bad" / "s"
    bad.mkdir(parents=True)
    (bad / "train-0.parquet").write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(InterlaceError, match=r"not a readable parquet file"):
        check_source(DataSpec(path=str(tmp_path / "bad")))
    with pytest.raises(InterlaceError, match=r"unknown builtin source 'builtin:nope'; known: builtin:smollm2-135m"):
        check_source(DataSpec(path="builtin:nope"))
    check_source(DataSpec(path=str(shards.root), subsets=["alpha"]))  # a good source passes
    check_source(DataSpec(path=str(shards.root / "*" / "*.parquet")))  # as a glob too


def test_hub_source_offline_table_and_unknown_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    from interlace.data import loader, sources

    real_split_rows = sources._hub_split_rows
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InterlaceError, match=r"hub dataset id, but the hub is offline.*local directory"):
        check_source(DataSpec(subsets=["coco_colors"]))
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # sizes from the shipped table: no network needed to plan the paper's 1%
    plans = loader.plan(DataSpec(subsets=["coco_colors", "chartqa"]))
    assert [(p.subset.name, p.quota) for p in plans] == [("coco_colors", 1182), ("chartqa", 182)]
    assert plans[0].indices == list(range(1182))
    with pytest.raises(InterlaceError, match=r"data\.subsets: unknown subset\(s\) \['nope'\]"):
        check_source(DataSpec(subsets=["nope"]))
    # FineVision: the shipped table only; a subset it cannot size (none now: a table with one count
    # removed) fails clearly, maxSamples or not, and the hub's metadata is never asked
    def no_metadata(*a: object) -> None:
        raise AssertionError("FineVision sizes must not come from hub metadata")

    monkeypatch.setattr(sources, "_hub_split_rows", no_metadata)
    real_table = sources.finevision_table
    monkeypatch.setattr(sources, "finevision_table", lambda: {**real_table(), "ai2d_merged": None})
    for cap in (None, 10):
        with pytest.raises(InterlaceError, match=r"data\.path: the shipped FineVision table .* \['ai2d_merged'\]"):
            check_source(DataSpec(subsets=["ai2d_merged", "chartqa"], max_samples=cap))
    # another hub dataset: its split metadata; unsized without maxSamples is an error, with it a share
    monkeypatch.setattr(sources, "_hub_split_rows", lambda *a: {"a": 400}.get(a[1]))
    import datasets

    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda hub_id: ["a", "b"])
    with pytest.raises(InterlaceError, match=r"data\.maxSamples: the row count of subset\(s\) \['b'\]"):
        check_source(DataSpec(path="someone/other"))
    plans = loader.plan(DataSpec(path="someone/other", max_samples=3))
    assert [(p.subset.name, p.quota, p.indices is None) for p in plans] == [("a", 2, False), ("b", 1, True)]
    # a metadata request that fails is reported, not swallowed
    monkeypatch.setattr(
        datasets, "load_dataset_builder", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down"))
    )
    with pytest.raises(InterlaceError, match=r"cannot read the metadata of subset 'a'.*ConnectionError: down"):
        real_split_rows("someone/other", "a", "train")


def test_finevision_table_is_well_formed() -> None:
    from interlace.data.sources import finevision_table

    table = finevision_table()
    assert len(table) == 185 and "visualwebinstruct(filtered)" in table
    assert table["coco_colors"] == 118287 and table["densefusion_1m"] == 1058751
    assert all(type(v) is int and v > 0 for v in table.values())  # every subset sized


def test_sampling_helpers() -> None:
    assert pick_indices(10, 3, mode="first", seed=0, subset="x") == [0, 1, 2]
    r = pick_indices(1_000_000, 5, mode="random", seed=1, subset="x")
    assert r == sorted(set(r)) and len(r) == 5 and all(0 <= i < 1_000_000 for i in r)
    assert pick_indices(1_000_000, 5, mode="random", seed=1, subset="y") != r
    with pytest.raises(ValueError, match=r"first.*random"):
        pick_indices(10, 3, mode="middle", seed=0, subset="x")
