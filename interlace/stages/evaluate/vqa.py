"""Built-in evaluator for small multiple-choice / short-answer VQA sets in a simple local format.

Why a built-in evaluator next to the harnesses: smoke runs, CI and air-gapped clusters need a score that
does not depend on downloading a benchmark suite. The format is one parquet or jsonl file (or a
directory of them), one row per question:

========== ======================================================================================
column     meaning
========== ======================================================================================
question   the question text (required)
answer     multiple choice: the letter (``"B"``, ``"(b)"``), the 0-based index, or the exact choice
           text; short answer: a string or a list of accepted strings (required)
choices    list of option strings; present and non-empty = multiple choice (optional)
image      a path (relative to the file), raw bytes, or ``{"bytes": ..., "path": ...}`` as written
           by Hugging Face ``datasets``; null for text-only rows (optional)
========== ======================================================================================

Scoring (both deterministic, greedy, no sampling):

* **multiple choice**: the options are listed as ``A. ...``, ``B. ...`` under the question with the
  instruction to answer with the letter (the MMBench / VLMEvalKit prompt style). The prediction is the
  option letter whose token gets the highest logit as the FIRST generated token (each letter is tried
  with and without a leading space, whichever tokenises to a single token). A model therefore always
  picks exactly one option, and no answer parsing can fail.
* **short answer**: greedy generation of up to ``max_new_tokens`` tokens; the first line of the output
  and every accepted answer are normalised (lower case, punctuation removed, articles a/an/the removed,
  whitespace collapsed, as in SQuAD/VQA scoring) and must be equal (exact match).

Accuracy is reported in percent (0-100).
"""

from __future__ import annotations

import io
import json
import logging
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interlace.data.chat import tokenizer_of
from interlace.errors import InterlaceError
from interlace.stages.evaluate.prompt import encode_prompts, left_padding, model_device

log = logging.getLogger(__name__)

LETTERS = string.ascii_uppercase
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
SA_INSTRUCTION = "Answer the question using a single word or phrase."
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


@dataclass
class VQAItem:
    """One question. `answer` is a letter for multiple choice, a list of accepted strings otherwise."""

    question: str
    answers: list[str]
    choices: list[str] | None = None
    image: Any | None = None  # PIL.Image.Image
    row: str = ""  # "<file>:<line>" for messages

    @property
    def multiple_choice(self) -> bool:
        return bool(self.choices)


@dataclass
class VQAScore:
    """Accuracy of one model on one set, with per-row predictions (for debugging and the tests)."""

    accuracy: float  # percent
    correct: int
    total: int
    predictions: list[str] = field(default_factory=list)


def normalize_answer(text: str) -> str:
    """SQuAD/VQA-style normalisation used for short-answer exact match."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def format_question(item: VQAItem) -> str:
    """The user-turn text for an item (options and instruction appended)."""
    if item.multiple_choice:
        assert item.choices is not None
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
        return f"{item.question}\n{options}\n{MC_INSTRUCTION}"
    return f"{item.question}\n{SA_INSTRUCTION}"


# ---------------------------------------------------------------------------------------------- loading


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in {".parquet", ".jsonl"})
        if not files:
            raise InterlaceError(f"{path}: no .parquet or .jsonl files in this VQA directory")
        return files
    if path.suffix not in {".parquet", ".jsonl"}:
        raise InterlaceError(f"{path}: a VQA set must be a .parquet or .jsonl file (or a directory of them)")
    if not path.is_file():
        raise InterlaceError(f"{path}: no such VQA file (check spec.evaluation.benchmarks)")
    return [path]


def _rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InterlaceError(f"{path}:{n}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise InterlaceError(f"{path}:{n}: each line must be a JSON object")
            rows.append(row)
        return rows
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise InterlaceError(f"{path}: not a readable parquet file ({err})") from None


def _image(value: Any, base_dir: Path, where: str) -> Any | None:
    if value is None:
        return None
    from PIL import Image

    if isinstance(value, dict):
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            return None
    try:
        if isinstance(value, bytes | bytearray):
            img = Image.open(io.BytesIO(value))
        elif isinstance(value, str):
            p = Path(value)
            p = p if p.is_absolute() else base_dir / p
            if not p.is_file():
                raise InterlaceError(f"{where}: image {value!r} not found (paths are relative to the file)")
            img = Image.open(p)
        else:
            raise InterlaceError(f"{where}: column 'image' must be a path, bytes or null")
        return img.convert("RGB")
    except InterlaceError:
        raise
    except Exception as err:
        raise InterlaceError(f"{where}: column 'image' is not a readable image ({err})") from None


def _gold_letter(answer: Any, choices: list[str], where: str) -> str:
    if isinstance(answer, bool):
        answer = str(answer)
    if isinstance(answer, int):
        if 0 <= answer < len(choices):
            return LETTERS[answer]
        raise InterlaceError(f"{where}: answer index {answer} is outside the {len(choices)} choices")
    if isinstance(answer, str):
        text = answer.strip()
        m = re.fullmatch(r"\(?([A-Za-z])[).]?", text)
        if m and m.group(1).upper() in LETTERS[: len(choices)]:
            return m.group(1).upper()
        if text in choices:
            return LETTERS[choices.index(text)]
    raise InterlaceError(
        f"{where}: answer {answer!r} is neither a choice letter A-{LETTERS[len(choices) - 1]}, "
        "a 0-based index, nor the text of one of the choices"
    )


def load_vqa(path: str | Path, *, limit: int | None = None) -> list[VQAItem]:
    """Read a VQA set (see the module docstring for the format). Raises InterlaceError on bad rows."""
    root = Path(path)
    items: list[VQAItem] = []
    for f in _files(root):
        for n, row in enumerate(_rows(f), 1):
            if limit is not None and len(items) >= limit:
                return items
            where = f"{f}:{n}"
            question = row.get("question")
            if not isinstance(question, str) or not question.strip():
                raise InterlaceError(f"{where}: column 'question' must be a non-empty string")
            if row.get("answer") is None:
                raise InterlaceError(f"{where}: column 'answer' is missing")
            choices = row.get("choices")
            if isinstance(choices, str):  # a JSON-encoded list (common in hand-made parquet files)
                try:
                    choices = json.loads(choices)
                except json.JSONDecodeError:
                    raise InterlaceError(f"{where}: column 'choices' must be a list of strings") from None
            if choices is not None:
                if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
                    raise InterlaceError(f"{where}: column 'choices' must be a list of strings")
                if len(choices) > len(LETTERS):
                    raise InterlaceError(f"{where}: at most {len(LETTERS)} choices are supported")
            answer = row["answer"]
            if choices:
                answers = [_gold_letter(answer, choices, where)]
            else:
                raw = answer if isinstance(answer, list) else [answer]
                answers = [str(a) for a in raw]
                if not answers or not all(normalize_answer(a) for a in answers):
                    raise InterlaceError(f"{where}: column 'answer' has an empty accepted answer")
            items.append(
                VQAItem(
                    question=question,
                    answers=answers,
                    choices=choices or None,
                    image=_image(row.get("image"), f.parent, where),
                    row=where,
                )
            )
    if not items:
        raise InterlaceError(f"{root}: the VQA set has no rows")
    return items


# ---------------------------------------------------------------------------------------------- scoring


def letter_token_ids(tokenizer: Any, n: int) -> list[list[int]]:
    """For each of the first n option letters, the single-token ids that spell it (with/without space)."""
    out: list[list[int]] = []
    for letter in LETTERS[:n]:
        ids = []
        for variant in (letter, " " + letter):
            enc = tokenizer.encode(variant, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in ids:
                ids.append(enc[0])
        if not ids:
            raise InterlaceError(
                f"the tokenizer has no single token for option letter {letter!r}; "
                "multiple-choice scoring needs one (use a short-answer set instead)"
            )
        out.append(ids)
    return out


def _generate(model: Any, inputs: dict[str, Any], tok: Any, max_new_tokens: int, logits: bool) -> Any:
    import torch

    with torch.inference_mode():
        return model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
            return_dict_in_generate=True,
            output_logits=logits,
        )


def predict(
    model: Any, processor: Any, items: Sequence[VQAItem], *, batch_size: int = 4, max_new_tokens: int = 16
) -> list[str]:
    """The model's answer to each item: an option letter (multiple choice) or generated text."""
    tok = tokenizer_of(processor)
    device = model_device(model)
    preds: list[str] = [""] * len(items)
    mc = [i for i, it in enumerate(items) if it.multiple_choice]
    sa = [i for i, it in enumerate(items) if not it.multiple_choice]
    with left_padding(processor):
        for group, is_mc in ((mc, True), (sa, False)):
            for start in range(0, len(group), batch_size):
                idx = group[start : start + batch_size]
                batch = [items[i] for i in idx]
                inputs = encode_prompts(
                    processor, [format_question(it) for it in batch], [it.image for it in batch], device=device
                )
                if is_mc:
                    out = _generate(model, inputs, tok, 1, logits=True)
                    first = out.logits[0].float()  # (batch, vocab): logits of the first new token
                    for row, (i, it) in enumerate(zip(idx, batch, strict=True)):
                        assert it.choices is not None
                        cand = letter_token_ids(tok, len(it.choices))
                        scores = [max(first[row, t].item() for t in ids) for ids in cand]
                        preds[i] = LETTERS[max(range(len(scores)), key=scores.__getitem__)]
                else:
                    out = _generate(model, inputs, tok, max_new_tokens, logits=False)
                    new = out.sequences[:, inputs["input_ids"].shape[1] :]
                    for row, i in enumerate(idx):
                        text = tok.decode(new[row], skip_special_tokens=True).strip()
                        preds[i] = text.splitlines()[0] if text else ""
    return preds


def is_correct(item: VQAItem, prediction: str) -> bool:
    """Letter equality for multiple choice, normalised exact match against any accepted answer otherwise."""
    if item.multiple_choice:
        return prediction == item.answers[0]
    p = normalize_answer(prediction)
    return any(p == normalize_answer(a) for a in item.answers)


def score_vqa(
    model: Any, processor: Any, items: Sequence[VQAItem], *, batch_size: int = 4, max_new_tokens: int = 16
) -> VQAScore:
    """Accuracy (percent) of `model` on `items`."""
    if not items:
        raise InterlaceError("score_vqa: no items to score")
    preds = predict(model, processor, items, batch_size=batch_size, max_new_tokens=max_new_tokens)
    correct = sum(is_correct(it, p) for it, p in zip(items, preds, strict=True))
    return VQAScore(accuracy=100.0 * correct / len(items), correct=correct, total=len(items), predictions=preds)
