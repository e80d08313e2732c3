"""Model adapters: parts found by walking the tree for every family; loading errors are clear."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from interlace.errors import InterlaceError
from interlace.models.load import SUPPORTED_FAMILIES, find_parts, load_model, resolve_dtype
from tests.fixtures.tiny import KINDS, VLM_KINDS, save_tiny, tiny


@pytest.mark.parametrize("kind", KINDS)
def test_find_parts(kind: str) -> None:
    model, _ = tiny(kind)
    parts = find_parts(model)
    assert parts.family == kind
    assert isinstance(parts.layers, nn.ModuleList) and len(parts.layers) == 8
    assert parts.layers_owner.layers is parts.layers
    assert parts.embed_tokens is model.get_input_embeddings()
    assert parts.lm_head is model.get_output_embeddings()
    assert parts.norm is not None and parts.text_config.num_hidden_layers == 8
    assert parts.is_multimodal == (kind in VLM_KINDS)
    if kind in VLM_KINDS:
        assert parts.vision is not None and parts.projector is not None
        assert not any(p is q for p in parts.vision.parameters() for q in parts.layers.parameters())
    else:
        assert parts.vision is None and parts.projector is None
    assert parts.deepstack_layers == ([0, 1, 2] if kind == "qwen3_vl" else [])


def _tiny_gpt2(directory: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=64)
    ).save_pretrained(directory)
    return directory


def test_unsupported_architecture(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(InterlaceError, match=r"unsupported architecture GPT2LMHeadModel.*qwen3_vl"):
        find_parts(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)))
    d = _tiny_gpt2(tmp_path / "gpt2")
    with pytest.raises(InterlaceError, match="unsupported architecture GPT2LMHeadModel") as err:
        load_model(str(d))
    for fam in SUPPORTED_FAMILIES:
        assert fam in str(err.value)


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(InterlaceError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(InterlaceError, match=r"no config\.json"):
        load_model(str(tmp_path))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InterlaceError, match="is a file"):
        load_model(str(tmp_path / "f.txt"))
    with pytest.raises(InterlaceError, match="neither an existing directory nor a valid hub id"):
        load_model("not a model!")
    with pytest.raises(InterlaceError, match="dtype"):
        resolve_dtype("int8", "cpu")


def test_uncached_hub_id_offline_fails_fast() -> None:
    code = (
        "import sys\n"
        "from interlace.errors import InterlaceError\n"
        "from interlace.models.load import load_model\n"
        "import time\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    load_model('interlace-test-org/does-not-exist-anywhere')\n"
        "except InterlaceError as e:\n"
        "    print(f'{time.monotonic() - t:.3f}', e); sys.exit(2)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=os.environ.get("HF_HOME", "/nonexistent-hf-home"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "HF_HUB_OFFLINE=1" in r.stdout and "interlace-test-org/does-not-exist-anywhere" in r.stdout
    assert float(r.stdout.split()[0]) < 10  # answered from the cache alone: no network, no torch import


@pytest.mark.parametrize("kind", ["qwen3_vl", "llama"])
def test_load_model_roundtrip(kind: str, tmp_path: Path) -> None:
    import torch

    save_tiny(kind, tmp_path / kind)
    loaded = load_model(str(tmp_path / kind))
    assert type(loaded.model).__name__ == type(tiny(kind)[0]).__name__
    assert loaded.parts.num_layers == 8 and not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32  # auto on CPU
    if kind in VLM_KINDS:
        assert loaded.processor.image_processor is not None
    else:
        assert loaded.processor("hello").input_ids
    bf = load_model(str(tmp_path / kind), dtype="bfloat16")
    assert next(bf.model.parameters()).dtype == torch.bfloat16


def test_builtin_source_goes_through_resolver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import interlace.builtin as builtin

    d = save_tiny("qwen3", tmp_path / "q")
    seen = []

    def fake_resolve(source: str) -> Path:
        seen.append(source)
        return d

    monkeypatch.setattr(builtin, "resolve_source", fake_resolve)
    loaded = load_model("builtin:whatever")
    assert seen == ["builtin:whatever"] and loaded.parts.family == "qwen3"
