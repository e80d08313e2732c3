"""The built-in VQA evaluator gives the exact accuracy of a model whose answers are known.

The model is a real (tiny) LlamaForCausalLM trained in the test to give chosen answers — some right,
some deliberately wrong — to a small set. The test first checks with an independent reference (plain
forward passes and argmax on the unpadded prompt) that the model really says what it was taught, then
computes the expected accuracy from those answers and the gold answers, and compares it with the
evaluator's number, which goes through batching, left padding, `generate`, letter scoring and
normalisation.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from interlace.errors import InterlaceError
from interlace.stages.evaluate.prompt import render_prompt
from interlace.stages.evaluate.vqa import (
    format_question,
    load_vqa,
    normalize_answer,
    score_vqa,
)
from tests.evaluation.tiny_text import greedy_answer, make_llama, make_tokenizer, memorise

# (question, choices, gold answer as written in the file, what the model is taught to say)
ROWS = [
    ("what colour is the sky ?", ["green", "blue", "red"], "B", "B"),
    ("how many legs has a cat ?", ["four", "two"], 0, "A"),
    ("which animal barks ?", ["cow", "dog", "fish", "bird"], "dog", "C"),  # wrong on purpose
    ("what is frozen water ?", ["ice", "steam"], "(a)", "A"),
    ("which is a fruit ?", ["stone", "apple", "chair"], "B", "A"),  # wrong on purpose
    ("what do bees make ?", ["milk", "honey"], "B.", "B"),
    ("what colour is grass ?", None, "Green", "green"),
    ("how many cats are there ?", None, ["two cats", "2"], "two cats ."),
    ("what is on the table ?", None, "an apple", "apple"),
    ("what animal is shown ?", None, "horse", "zebra"),  # wrong on purpose
]


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    Image.new("RGB", (8, 8), colour).save(path)


def _write_jsonl(path: Path) -> None:
    _png(path.parent / "img0.png", (255, 0, 0))
    lines = []
    for i, (q, choices, gold, _) in enumerate(ROWS):
        row: dict = {"question": q, "answer": gold}
        if choices is not None:
            row["choices"] = choices
        if i % 3 == 0:
            row["image"] = "img0.png"
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")


def _expected_letter(choices: list[str], gold: object) -> str:
    """Independent decoding of the gold answers written above."""
    table = {"B": "B", 0: "A", "dog": "B", "(a)": "A", "B.": "B"}
    assert choices
    return table[gold]  # type: ignore[index]


def test_exact_accuracy_of_a_model_with_known_answers(tmp_path: Path) -> None:
    data = tmp_path / "set.jsonl"
    _write_jsonl(data)
    items = load_vqa(data)
    assert len(items) == len(ROWS)
    assert [it.image is not None for it in items] == [i % 3 == 0 for i in range(len(ROWS))]

    texts = [format_question(it) for it in items] + [t for *_, t in ROWS] + ["<|assistant|>"]
    tok = make_tokenizer(texts)
    model = make_llama(len(tok), layers=2, hidden=64, seed=0)
    prompts = [render_prompt(tok, format_question(it), with_image=False) for it in items]
    memorise(model, tok, [(p, taught) for p, (*_, taught) in zip(prompts, ROWS, strict=True)], steps=150)

    # The model says what it was taught (independent reference, no code under test).
    said = [greedy_answer(model, tok, p) for p in prompts]
    assert said == [taught for *_, taught in ROWS]

    # Expected accuracy from first principles.
    correct = 0
    for (_q, choices, gold, _), answer in zip(ROWS, said, strict=True):
        if choices is not None:
            correct += answer == _expected_letter(choices, gold)
        else:
            golds = gold if isinstance(gold, list) else [gold]
            simple = {g.lower().replace(".", "").replace("an ", "").strip() for g in golds}
            correct += answer.lower().replace(".", "").strip() in simple
    expected = 100.0 * correct / len(ROWS)
    assert correct == 7  # by construction: 4 of 6 multiple-choice and 3 of 4 short answers are right

    for batch_size in (1, 3, 16):  # padding and batching must not change any answer
        score = score_vqa(model, tok, items, batch_size=batch_size, max_new_tokens=6)
        assert score.accuracy == pytest.approx(expected, abs=1e-12)
        assert score.correct == correct and score.total == len(ROWS)


def test_parquet_with_image_bytes_and_directory(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 255, 0)).save(buf, format="PNG")
    table = pa.table(
        {
            "question": ["q one ?", "q two ?"],
            "choices": [["x", "y"], None],
            "answer": ["B", "yes"],
            "image": [{"bytes": buf.getvalue(), "path": None}, None],
        }
    )
    d = tmp_path / "vqa"
    d.mkdir()
    pq.write_table(table, d / "a.parquet")
    (d / "b.jsonl").write_text(json.dumps({"question": "q three ?", "answer": 2, "choices": ["a", "b", "c"]}))
    items = load_vqa(d)
    assert [it.answers for it in items] == [["B"], ["yes"], ["C"]]
    assert items[0].image.size == (4, 4) and items[1].image is None
    assert [it.multiple_choice for it in items] == [True, False, True]
    assert len(load_vqa(d, limit=2)) == 2


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ({"answer": "A"}, "'question'"),
        ({"question": "q"}, "'answer'"),
        ({"question": "q", "choices": ["a", "b"], "answer": "D"}, "neither a choice letter"),
        ({"question": "q", "choices": ["a", "b"], "answer": 5}, "outside the 2 choices"),
        ({"question": "q", "choices": "nope", "answer": "A"}, "'choices'"),
        ({"question": "q", "answer": "x", "image": "missing.png"}, "not found"),
        ({"question": "q", "answer": "..."}, "empty accepted answer"),
    ],
)
def test_bad_rows_name_the_column(tmp_path: Path, row: dict, needle: str) -> None:
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(row) + "\n")
    with pytest.raises(InterlaceError, match=needle) as err:
        load_vqa(p)
    assert "bad.jsonl:1" in str(err.value)


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(InterlaceError, match="no such VQA file"):
        load_vqa(tmp_path / "nope.jsonl")
    with pytest.raises(InterlaceError, match=r"\.parquet or \.jsonl"):
        load_vqa(tmp_path / "x.csv")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InterlaceError, match="no rows"):
        load_vqa(tmp_path / "empty.jsonl")


def test_normalisation() -> None:
    assert normalize_answer("  The Two  Cats. ") == "two cats"
    assert normalize_answer("An apple!") == "apple"
    assert normalize_answer("a") == ""
    assert normalize_answer("3.5") == "35"  # punctuation removed everywhere, as in SQuAD
