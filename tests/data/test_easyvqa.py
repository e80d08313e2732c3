"""builtin:easy-vqa / builtin:easy-vqa-test (PyPI easy-vqa in FineVision's schema) and the builtin
VLM trained on them (builtin:easyvqa-vl, here at its tiny CI size builtin:easyvqa-vl-tiny)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("easy_vqa")

from interlace.builtin import easyvqa, resolve_source, vqa_set
from interlace.data import DataStats, load_samples
from interlace.schema.spec import DataSpec, EvaluationSpec

ANSWERS = {"circle", "rectangle", "triangle", "red", "green", "blue", "yellow", "teal", "brown", "gray", "black",
           "yes", "no"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("interlace-cache")


@pytest.fixture
def in_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INTERLACE_CACHE", str(cache))
    return cache


def test_rows_load_in_finevision_schema_with_images(in_cache: Path) -> None:
    train_dir = resolve_source("builtin:easy-vqa")
    test_dir = resolve_source("builtin:easy-vqa-test")
    assert train_dir.parent == test_dir.parent and train_dir.parent.parent == in_cache / "data"
    manifest = json.loads((train_dir.parent / "manifest.json").read_text())
    assert manifest["rows"] == {"easy-vqa": 38575, "easy-vqa-test": 9673}
    assert set(manifest["answers"]) == ANSWERS
    stamp = (train_dir / "rows.jsonl").stat().st_mtime_ns
    t = time.perf_counter()
    assert resolve_source("builtin:easy-vqa") == train_dir  # built once
    assert time.perf_counter() - t < 1.0 and (train_dir / "rows.jsonl").stat().st_mtime_ns == stamp

    raw = json.loads((train_dir / "rows.jsonl").open().readline())
    assert set(raw) == {"images", "texts", "source"} and len(raw["images"]) == 1 and len(raw["texts"]) == 1

    stats = DataStats()
    samples = list(load_samples(DataSpec(path="builtin:easy-vqa-test", fraction=1.0, max_samples=40), stats=stats))
    assert len(samples) == 40 and stats.skipped == {}
    pkg = easyvqa.questions("test")
    for k, s in enumerate(samples):  # the test split keeps the package's order
        q, a, _ = pkg[k]
        assert [t.role for t in s.turns] == ["user", "assistant"]
        assert s.turns[0].text == f"{q}\n{easyvqa.SA_INSTRUCTION}" and s.turns[1].text == a in ANSWERS
        assert len(s.images) == 1 and s.images[0].size == (64, 64) and s.images[0].mode == "RGB"
        assert s.source.startswith("easy-vqa-test#")
    # The rows' images are the package's images (the test split's image ids, pixel for pixel).
    from PIL import Image

    img_id = pkg[0][2]
    ref = Image.open(easyvqa.package_dir() / "test" / "images" / f"{img_id}.png").convert("RGB")
    assert samples[0].images[0].tobytes() == ref.tobytes()
    # The train split is shuffled once (the package lists it image by image), deterministically.
    train = list(load_samples(DataSpec(path="builtin:easy-vqa", fraction=1.0, max_samples=30)))
    assert len({s.turns[1].text for s in train}) > 3
    first = [(q, a) for q, a, _ in easyvqa.questions("train")[:30]]
    assert [(s.turns[0].text.split("\n")[0], s.turns[1].text) for s in train] != first


def test_instruction_is_the_evaluators() -> None:
    from interlace.stages.evaluate.vqa import SA_INSTRUCTION, VQAItem, format_question

    assert easyvqa.SA_INSTRUCTION == SA_INSTRUCTION
    assert easyvqa.user_text("what color is the shape?") == format_question(
        VQAItem(question="what color is the shape?", answers=["red"])
    )


def test_vqa_set_is_a_benchmark(in_cache: Path) -> None:
    from interlace.stages.evaluate.runner import check_benchmarks, vqa_path
    from interlace.stages.evaluate.vqa import load_vqa

    path = vqa_path("builtin:easy-vqa-test")
    assert path == vqa_set("builtin:easy-vqa-test") and path.is_file()
    check_benchmarks(EvaluationSpec(benchmarks=["builtin:easy-vqa-test"]))
    items = load_vqa(path)
    assert len(items) == 9673
    assert all(not it.multiple_choice and it.answers[0] in ANSWERS and it.image is not None for it in items[:50])
    assert items[0].question == easyvqa.questions("test")[0][0]


def test_tiny_builtin_vlm_builds_loads_by_id_and_answers(in_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from interlace.cli import main
    from interlace.errors import InterlaceError
    from interlace.models.builtin_vlm import ensure_built
    from interlace.models.load import load_model
    from interlace.stages.evaluate.vqa import load_vqa, score_vqa

    # Resolving the name only looks the checkpoint up: nothing is trained until the explicit step runs.
    with pytest.raises(InterlaceError, match=r"not built yet.*`interlace builtin builtin:easyvqa-vl-tiny`"):
        load_model("builtin:easyvqa-vl-tiny", dtype="float32")
    assert not list((in_cache / "models").glob("easyvqa-vl-tiny-*"))
    t = time.perf_counter()
    assert main(["builtin", "builtin:easyvqa-vl-tiny"]) == 0  # the explicit step, as the error names it
    lm = load_model("builtin:easyvqa-vl-tiny", dtype="float32")
    built = time.perf_counter() - t
    assert capsys.readouterr().out == f"builtin:easyvqa-vl-tiny\t{lm.path}\n"
    assert lm.parts.family == "qwen3_vl" and lm.parts.is_multimodal and lm.parts.vision is not None
    assert lm.parts.deepstack_layers == [0] and lm.parts.num_layers == 2
    assert lm.path is not None and lm.path.parent == in_cache / "models"
    assert lm.path.name.startswith("easyvqa-vl-tiny-")
    info = json.loads((lm.path / "interlace-builtin.json").read_text())
    assert info["recipe"]["steps"] == 4 and info["training"]["samples_seen"] == 16
    assert info["training"]["final_loss"] < info["training"]["first_loss"] + 1.0
    tok = lm.processor.tokenizer
    assert all(len(tok.encode(a, add_special_tokens=False)) == 1 for a in ANSWERS)  # one token per answer

    items = load_vqa(vqa_set("builtin:easy-vqa-test"), limit=6)
    score = score_vqa(lm.model, lm.processor, items, batch_size=3, max_new_tokens=4)
    assert score.total == 6 and all(isinstance(p, str) for p in score.predictions)
    assert 0.0 <= score.accuracy <= 100.0

    t = time.perf_counter()
    again = load_model("builtin:easyvqa-vl-tiny", dtype="float32")  # from the cache, no retraining
    assert again.path == lm.path and time.perf_counter() - t < max(5.0, built / 2)
    assert ensure_built("easyvqa-vl-tiny") == lm.path  # built once: the second call only looks it up


def test_recipe_is_deterministic(in_cache: Path, tmp_path: Path) -> None:
    import torch

    from interlace.builtin import easyvqa_vl
    from interlace.models import builtin_vlm

    recipe = easyvqa_vl.RECIPES["easyvqa-vl-tiny"]
    a = builtin_vlm.build(tmp_path / "a", recipe)
    b = builtin_vlm.build(tmp_path / "b", recipe)
    assert a["training"]["final_loss"] == b["training"]["final_loss"]
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_full_recipe_is_a_qwen3_vl_with_deepstack_and_8_to_16_layers() -> None:
    from interlace.builtin import easyvqa_vl
    from interlace.models.load import find_parts

    recipe = easyvqa_vl.RECIPES["easyvqa-vl"]
    tok = easyvqa_vl.build_tokenizer()
    parts = find_parts(easyvqa_vl.build_model(recipe, tok))
    assert type(parts.layers_owner).__name__ == "Qwen3VLTextModel"
    assert 8 <= parts.num_layers <= 16 and parts.deepstack_layers == [0, 1, 2]
    assert recipe.steps >= 500 and recipe.max_samples is None


def test_encoded_rows_label_only_the_answer(in_cache: Path) -> None:
    from interlace.builtin import easyvqa_vl
    from interlace.data.encode import IGNORE_INDEX, encode_sample

    proc = easyvqa_vl.build_processor(easyvqa_vl.build_tokenizer())
    sample = next(iter(load_samples(DataSpec(path="builtin:easy-vqa", fraction=1.0, max_samples=1))))
    ex = encode_sample(sample, proc, max_length=96)
    labelled = [int(t) for t in ex["labels"] if t != IGNORE_INDEX]
    tok = proc.tokenizer
    assert tok.decode(labelled) == sample.turns[1].text + "<|im_end|>"
    assert int((ex["input_ids"] == proc.image_token_id).sum()) == 16  # 64x64 / 8x8 patches / 2x2 merge
