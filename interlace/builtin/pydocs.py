"""`builtin:python-docs`: out-of-domain evaluation text, the docstrings of Python's standard library.

`builtin:english` (WordNet glosses and fortunes) is what the embedded default calibrates and finetunes
on, and `builtin:english-heldout` is held-out rows of the same corpus: a model finetuned on the one gets
better on the other by adapting to the corpus, which says nothing about what it kept of what it knew.
This corpus differs in kind (technical reference prose about code, not dictionary glosses and
sayings), the pipeline never trains on it, and it is text SmolLM2 saw in pretraining (Python
documentation), so its perplexity measures retained knowledge rather than adaptation.

Source: the `.py` files of Debian's `libpython3.11-stdlib` (`/usr/lib/python3.<minor>/`), present
wherever Debian's `python3` is installed: on this machine and in the runtime image (Debian bookworm,
whose venv runs on Debian's python3). The interpreter a venv happens to run on is NOT used: its
patch version (and so its docstrings) differs between a developer's pyenv and the image; the Debian
files are the same everywhere the same package version is installed. `/usr/share/man` and
`/usr/share/doc` were ruled out: the runtime image excludes them (dpkg path-exclude).

A row, for every documented public module, class, function and method (the file is parsed with `ast`,
nothing is imported): the user asks what `<module>.<name>` does, the assistant answers with its
docstring (`inspect.cleandoc`, 60 to 1000 characters). Rows are deduplicated, sorted by their text
and shuffled once with a fixed seed (so `sampling: first` takes a mix of modules); one split,
`python-docs`, written once as jsonl in FineVision's row schema under the interlace cache.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

from interlace.errors import InterlaceError

PACKAGE = "libpython3.11-stdlib"
STDLIB_GLOB = "/usr/lib/python3.*"
SPLIT = "python-docs"
SHUFFLE_SEED = 0
MIN_CHARS = 60
MAX_CHARS = 1000
# Test suites, the IDE, GUI toolkits, codecs tables, vendored wheels: not reference documentation.
_SKIP_DIRS = {
    "test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo", "ensurepip", "pydoc_data", "encodings",
    "site-packages", "dist-packages", "__pycache__", "__phello__",
    "distutils",  # Debian ships it in python3-distutils, which the runtime image does not install
}
_QUESTIONS = (
    "What does `{q}` do in Python's standard library?",
    "Explain the Python `{q}` {kind}.",
    "Describe `{q}` from the Python standard library.",
)


def stdlib_dir() -> Path:
    """Debian's standard library directory (the highest python3.N that has the stdlib in it)."""
    found = sorted(
        (p for p in Path("/").glob(STDLIB_GLOB.lstrip("/")) if (p / "os.py").is_file()),
        key=lambda p: tuple(int(x) for x in re.findall(r"\d+", p.name)),
    )
    if not found:
        raise InterlaceError(
            f"builtin:python-docs needs Debian's Python standard library ({STDLIB_GLOB}, package "
            f"{PACKAGE}, installed with python3); install it with `apt-get install -y python3`"
        )
    return found[-1]


def source_files(root: Path | None = None) -> list[Path]:
    """The stdlib .py files the rows are built from, sorted."""
    root = root or stdlib_dir()
    files = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if any(part in _SKIP_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        files.append(p)
    return sorted(files)


def fingerprint(files: list[Path]) -> str:
    """Changes when the package changes (names and sizes of its files), so the cache rebuilds."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f}\0{f.stat().st_size}\n".encode())
    return h.hexdigest()[:12]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _clean(doc: str) -> str | None:
    text = inspect.cleandoc(doc).strip()
    if not (MIN_CHARS <= len(text) <= MAX_CHARS) or not re.search(r"[A-Za-z]{3,}", text):
        return None
    return text


def _row(qualname: str, kind: str, doc: str, module: str) -> dict[str, str]:
    question = _QUESTIONS[int(hashlib.sha256(qualname.encode()).hexdigest(), 16) % len(_QUESTIONS)]
    return {"user": question.format(q=qualname, kind=kind), "assistant": doc, "source": f"python:{module}"}


def doc_rows(path: Path, module: str) -> Iterator[dict[str, str]]:
    """One row per documented public module/class/function/method of one file (parsed, not imported)."""
    if any(part.startswith("_") for part in module.split(".")):
        return
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"), filename=str(path))
    except (SyntaxError, ValueError):
        return
    doc = ast.get_docstring(tree, clean=False)
    if doc and (text := _clean(doc)):
        yield _row(module, "module", text, module)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and not node.name.startswith("_"):
            yield from _node_rows(node, module, module)


def _node_rows(node: ast.AST, prefix: str, module: str) -> Iterator[dict[str, str]]:
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    qualname = f"{prefix}.{node.name}"
    kind = "class" if isinstance(node, ast.ClassDef) else ("method" if prefix != module else "function")
    doc = ast.get_docstring(node, clean=False)
    if doc and (text := _clean(doc)):
        yield _row(qualname, kind, text, module)
    if isinstance(node, ast.ClassDef):
        for child in node.body:
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and not child.name.startswith("_"):
                yield from _node_rows(child, qualname, module)


def build(out_dir: Path, root: Path | None = None) -> dict[str, int]:
    """Write `python-docs/rows.jsonl` under out_dir; return the row count per split."""
    root = root or stdlib_dir()
    files = source_files(root)
    seen: set[tuple[str, str]] = set()
    turns = []
    for f in files:
        for t in doc_rows(f, module_name(root, f)):
            key = (t["user"], t["assistant"])
            if key not in seen:
                seen.add(key)
                turns.append(t)
    # Inherited-looking duplicates (the same docstring under many names) would weigh one text many times.
    by_answer: dict[str, dict[str, str]] = {}
    for t in sorted(turns, key=lambda t: (t["assistant"], t["user"])):
        by_answer.setdefault(t["assistant"], t)
    unique = sorted(by_answer.values(), key=lambda t: (t["user"], t["assistant"]))
    random.Random(SHUFFLE_SEED).shuffle(unique)
    d = out_dir / SPLIT
    d.mkdir(parents=True, exist_ok=True)
    with (d / "rows.jsonl").open("w", encoding="utf-8") as fh:
        for t in unique:
            row = {"images": [], "texts": [{"user": t["user"], "assistant": t["assistant"]}], "source": t["source"]}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = {SPLIT: len(unique)}
    (out_dir / "manifest.json").write_text(
        json.dumps({"package": PACKAGE, "stdlib": str(root), "files": len(files), "rows": counts}, indent=1) + "\n"
    )
    return counts
