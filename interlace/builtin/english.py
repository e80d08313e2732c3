"""`builtin:english`: real English conversations built from text that Debian packages ship.

The embedded default (SmolLM2-135M-Instruct, no hub) needs real text for calibration, finetuning and a
held-out perplexity. Two packages give plenty, with licences that allow redistribution:

* `wordnet-base` (WordNet 3.0): ~117K synsets, each a set of words, a definition and often example
  sentences. A row: the user asks what a word means, the assistant answers with the part of speech,
  the definition, the examples and the synonyms.
* `fortunes` + `fortunes-min`: ~15K sayings, quotations and jokes. A row: the user gives the first
  half of the text and asks for the rest, the assistant completes it (so calibration, which sees only
  the first user turn, gets real varied English, and the answer is real English, not a template).

Rows are written once, in FineVision's row schema (`images: []`, `texts: [{user, assistant}]`,
`source`), to a jsonl shard under the interlace cache, then read like any local shard. The split is
a pure function of the row's text (sha256, 1 in 10 held out), so it is the same on every machine and
does not move when the other rows change; the rows are shuffled once with a fixed seed so that
`sampling: first` takes a mix of definitions and sayings.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

from interlace.errors import InterlaceError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
PACKAGES = ("fortunes", "fortunes-min", "wordnet-base")
# ASCII drawings and machine-translation bait are not English prose.
_SKIP_FORTUNES = {"art", "ascii-art", "translate-me"}
_POS = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
_QUESTIONS = (
    'What does "{w}" mean?',
    'Define the word "{w}".',
    'What is the meaning of "{w}"?',
    'Explain what "{w}" means.',
)
HELDOUT_EVERY = 10
SHUFFLE_SEED = 0


def source_files() -> list[Path]:
    """The Debian files the rows are built from; InterlaceError naming the packages when missing."""
    wordnet = [WORDNET_DIR / f"data.{p}" for p in _POS]
    fortunes = sorted(
        p
        for p in (FORTUNES_DIR.iterdir() if FORTUNES_DIR.is_dir() else [])
        if p.is_file() and not p.suffix and p.name not in _SKIP_FORTUNES
    )
    if not all(p.is_file() for p in wordnet) or not fortunes:
        raise InterlaceError(
            "builtin:english needs the Debian packages " + ", ".join(PACKAGES) + " (real English text "
            "under /usr/share/wordnet and /usr/share/games/fortunes); install them with "
            "`sudo bash hack/system-deps.sh` or `apt-get install -y " + " ".join(PACKAGES) + "`"
        )
    return wordnet + fortunes


def fingerprint(files: list[Path]) -> str:
    """Changes when the packages change (names and sizes of their files), so the cache rebuilds."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f}\0{f.stat().st_size}\n".encode())
    return h.hexdigest()[:12]


def _wordnet_rows(path: Path, pos: str) -> Iterator[dict[str, str]]:
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("  ") or " | " not in line:
            continue  # licence header
        head, gloss = line.split(" | ", 1)
        fields = head.split()
        n = int(fields[3], 16)
        words = [re.sub(r"\([a-z]+\)$", "", w).replace("_", " ") for w in fields[4 : 4 + 2 * n : 2]]
        parts = [p.strip() for p in gloss.strip().split(";") if p.strip()]
        definition = "; ".join(p for p in parts if not p.startswith('"'))
        examples = [p.strip('"') for p in parts if p.startswith('"')]
        if not words or not definition:
            continue
        word = words[0]
        question = _QUESTIONS[int(hashlib.sha256(word.encode()).hexdigest(), 16) % len(_QUESTIONS)]
        answer = f'"{word}" ({_POS[pos]}): {definition}.'
        if examples:
            answer += " For example: " + " ".join(f'"{e}"' if e.endswith((".", "!", "?")) else f'"{e}."' for e in examples[:2])
        others = [w for w in dict.fromkeys(words[1:]) if w != word]
        if others:
            answer += " Similar words: " + ", ".join(others[:5]) + "."
        yield {"user": question.format(w=word), "assistant": answer, "source": f"wordnet:{pos}"}


def _fortune_rows(path: Path) -> Iterator[dict[str, str]]:
    text = path.read_text(encoding="utf-8", errors="replace")
    for entry in re.split(r"^%\s*$", text, flags=re.MULTILINE):
        body = "\n".join(line.rstrip() for line in entry.strip("\n").splitlines()).strip()
        words = body.split()
        if len(words) < 6 or len(body) > 800:
            continue
        # Split at the line or sentence end nearest the middle; else at the middle word.
        mid = len(body) / 2
        cuts = [m.end() for m in re.finditer(r"[.!?;:]\s+|\n", body) if 0 < m.end() < len(body) - 1]
        if cuts:
            cut = min(cuts, key=lambda c: (abs(c - mid), c))
            first, rest = body[:cut].strip(), body[cut:].strip()
        else:
            half = len(words) // 2
            first, rest = " ".join(words[:half]), " ".join(words[half:])
        if not first or not rest:
            continue
        yield {
            "user": f"Complete this quotation from the {path.name} collection:\n{first}",
            "assistant": rest,
            "source": f"fortunes:{path.name}",
        }


def is_heldout(turn: dict[str, str]) -> bool:
    digest = hashlib.sha256(f"{turn['user']}\0{turn['assistant']}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % HELDOUT_EVERY == 0


def build(out_dir: Path) -> dict[str, int]:
    """Write `english/rows.jsonl` and `english-heldout/rows.jsonl` under out_dir; return row counts."""
    files = source_files()
    turns: list[dict[str, str]] = []
    for f in files:
        if f.parent == WORDNET_DIR:
            turns.extend(_wordnet_rows(f, f.suffix.lstrip(".")))
        else:
            turns.extend(_fortune_rows(f))
    seen: set[tuple[str, str]] = set()
    unique = []
    for t in turns:
        key = (t["user"], t["assistant"])
        if key not in seen:
            seen.add(key)
            unique.append(t)
    random.Random(SHUFFLE_SEED).shuffle(unique)
    counts = {}
    for split, keep in (("english", False), ("english-heldout", True)):
        d = out_dir / split
        d.mkdir(parents=True, exist_ok=True)
        n = 0
        with (d / "rows.jsonl").open("w", encoding="utf-8") as fh:
            for t in unique:
                if is_heldout(t) == keep:
                    row = {
                        "images": [],
                        "texts": [{"user": t["user"], "assistant": t["assistant"]}],
                        "source": t["source"],
                    }
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                    n += 1
        counts[split] = n
    (out_dir / "manifest.json").write_text(
        json.dumps(
            {"packages": list(PACKAGES), "files": [str(f) for f in files], "rows": counts}, indent=1
        )
        + "\n"
    )
    return counts
