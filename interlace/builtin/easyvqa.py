"""`builtin:easy-vqa` / `builtin:easy-vqa-test`: real image-question-answer data from PyPI's `easy-vqa`.

The package `easy-vqa==1.0` (MIT) ships 5,000 64x64 PNG images of one shape (circle, rectangle,
triangle) in one of 8 colours, with generated questions about them and their one-word answers
(13 answers in all: the 3 shapes, the 8 colours, yes, no): 4,000 images / 38,575 questions in its
train split, 1,000 images / 9,673 questions in its test split. Synthetic, but every question has a
right answer that needs the image.

Materialised once (interlace.builtin) under the interlace cache as

* `easy-vqa/rows.jsonl`, `easy-vqa-test/rows.jsonl`: FineVision-schema rows, one question per row
  (`images: ["../images/<split>/<id>.png"]`, `texts: [{user, assistant}]`, `source`), so finetuning,
  calibration and perplexity read them like any local shard. The user turn is the question followed
  by the short-answer instruction of the built-in VQA evaluator (as LLaVA's training mix does for
  VQAv2), so a model trained or healed on these rows sees the evaluator's prompt;
* `vqa/easy-vqa-test.jsonl` (and `vqa/easy-vqa.jsonl`): the same questions in the built-in VQA
  evaluator's format (`question`, `answer`, `image`), for `spec.evaluation.benchmarks:
  [builtin:easy-vqa-test]`;
* `images/{train,test}/<id>.png`: copies of the package's images.

The training rows are shuffled once with a fixed seed (the package lists the questions image by image),
so `sampling: first` takes a mix of images and question types; the test rows keep the package's order.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

from interlace.errors import InterlaceError

PACKAGE = "easy-vqa"
VERSION = "1.0"
SPLITS = {"easy-vqa": "train", "easy-vqa-test": "test"}
# The short-answer instruction of interlace.stages.evaluate.vqa (a test checks they are equal; the
# data layer may not import the evaluation stage).
SA_INSTRUCTION = "Answer the question using a single word or phrase."
SHUFFLE_SEED = 0


def package_dir() -> Path:
    """The installed `easy_vqa` package's data directory; InterlaceError naming the install when absent."""
    import importlib.util

    spec = importlib.util.find_spec("easy_vqa")  # finds the package without importing it
    if spec is None or not spec.origin:
        raise InterlaceError(
            f"builtin:easy-vqa needs the PyPI package {PACKAGE} (it ships the images and questions); "
            f"install it: `pip install {PACKAGE}=={VERSION}`"
        )
    data = Path(spec.origin).parent / "data"
    if not ((data / "train" / "questions.json").is_file() and (data / "test" / "questions.json").is_file()):
        raise InterlaceError(
            f"the installed {PACKAGE} has no data/train and data/test questions; reinstall it: "
            f"`pip install --force-reinstall {PACKAGE}=={VERSION}`"
        )
    return data


def fingerprint(data: Path | None = None) -> str:
    """Changes when the package's data changes (sizes of the question files, number of images), so
    the cache rebuilds; cheap enough to compute on every resolve (stat calls, one directory listing)."""
    data = data or package_dir()
    h = hashlib.sha256(f"{PACKAGE}\0{SA_INSTRUCTION}\0{SHUFFLE_SEED}\n".encode())
    h.update(f"answers\0{(data / 'answers.txt').stat().st_size}\n".encode())
    for split in ("train", "test"):
        n_images = sum(1 for n in os.listdir(data / split / "images") if n.endswith(".png"))
        h.update(f"{split}\0{(data / split / 'questions.json').stat().st_size}\0{n_images}\n".encode())
    return h.hexdigest()[:12]


def answers(data: Path | None = None) -> list[str]:
    """The package's answer vocabulary (13 words)."""
    data = data or package_dir()
    return [a.strip() for a in (data / "answers.txt").read_text().splitlines() if a.strip()]


def questions(split: str, data: Path | None = None) -> list[tuple[str, str, int]]:
    """(question, answer, image id) of a package split (`train` or `test`), in the package's order."""
    data = data or package_dir()
    raw = json.loads((data / split / "questions.json").read_text())
    return [(str(q), str(a), int(i)) for q, a, i in raw]


def user_text(question: str) -> str:
    return f"{question}\n{SA_INSTRUCTION}"


def build(out_dir: Path) -> dict[str, int]:
    """Write the rows, the VQA sets and the images under out_dir (see the module docstring)."""
    data = package_dir()
    counts: dict[str, int] = {}
    (out_dir / "vqa").mkdir(parents=True, exist_ok=True)
    for name, split in SPLITS.items():
        img_dir = out_dir / "images" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        for p in sorted((data / split / "images").glob("*.png")):
            shutil.copyfile(p, img_dir / p.name)
        qs = questions(split, data)
        missing = sorted({i for _, _, i in qs if not (img_dir / f"{i}.png").is_file()})
        if missing:
            raise InterlaceError(f"{PACKAGE}: {split} questions refer to missing images {missing[:5]}")
        order = list(range(len(qs)))
        if split == "train":
            random.Random(SHUFFLE_SEED).shuffle(order)
        rows_dir = out_dir / name
        rows_dir.mkdir(parents=True, exist_ok=True)
        with (rows_dir / "rows.jsonl").open("w", encoding="utf-8") as rows, (
            out_dir / "vqa" / f"{name}.jsonl"
        ).open("w", encoding="utf-8") as vqa:
            for k in order:
                q, a, i = qs[k]
                row: dict[str, Any] = {
                    "images": [f"../images/{split}/{i}.png"],
                    "texts": [{"user": user_text(q), "assistant": a}],
                    "source": f"easy-vqa:{split}:{i}",
                }
                rows.write(json.dumps(row) + "\n")
                vqa.write(json.dumps({"question": q, "answer": a, "image": f"../images/{split}/{i}.png"}) + "\n")
        counts[name] = len(qs)
    (out_dir / "manifest.json").write_text(
        json.dumps({"package": f"{PACKAGE}=={VERSION}", "answers": answers(data), "rows": counts}, indent=1)
        + "\n"
    )
    return counts
