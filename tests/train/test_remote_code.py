"""A model with remote code (trustRemoteCode: true) stays loadable after pruning and finetuning.

The pruned and finetuned copies keep the config's auto_map, so every later load needs
trust_remote_code as much as the original did (without it transformers quietly runs its own class for
the model_type, or refuses an unknown one): the evaluation's reload of <output>/finetuned
(interlace.pipeline.remote) and the Ray Train workers' load of <output>/pruned
(interlace.stages.finetune.loop) both take it from spec.model. Once the reload dropped it, and a
`trustRemoteCode: true` job failed after training.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interlace.pipeline import remote
from interlace.schema.spec import ModelSpec
from interlace.stages.finetune import loop
from tests.train.conftest import hand_plan, pattern_spec

CODE = '''
from transformers import LlamaConfig, LlamaForCausalLM


class RemoteLlamaConfig(LlamaConfig):
    pass


class RemoteLlamaForCausalLM(LlamaForCausalLM):
    config_class = RemoteLlamaConfig
'''


def remote_code_model(out: Path) -> Path:
    """The tiny Llama, saved as a model whose classes live in the checkpoint's own code."""
    from tests.fixtures.tiny import save_tiny

    d = save_tiny("llama", out)
    (d / "remote_llama.py").write_text(CODE)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["RemoteLlamaForCausalLM"]
    cfg["auto_map"] = {
        "AutoConfig": "remote_llama.RemoteLlamaConfig",
        "AutoModelForCausalLM": "remote_llama.RemoteLlamaForCausalLM",
    }
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return remote_code_model(tmp_path_factory.mktemp("remote") / "m")


def test_without_trust_remote_code_the_checkpoints_own_code_is_silently_not_used(remote_dir: Path) -> None:
    # A supported model_type with an auto_map: transformers falls back to its built-in class.
    loaded = remote._load(str(remote_dir), "cpu", ModelSpec(source="org/original", dtype="float32"))
    assert type(loaded.model).__name__ == "LlamaForCausalLM"


def test_the_evaluation_reload_of_a_copy_trusts_remote_code_as_spec_model_says(remote_dir: Path) -> None:
    like = ModelSpec(source="org/original", dtype="float32", trust_remote_code=True)
    loaded = remote._load(str(remote_dir), "cpu", like)  # <output>/finetuned, loaded as spec.model says
    assert type(loaded.model).__name__ == "RemoteLlamaForCausalLM"


def test_the_workers_load_the_pruned_copy_trusting_remote_code(remote_dir: Path, tmp_path: Path) -> None:
    import torch

    config = loop.WorkerConfig(
        model_dir=remote_dir,
        model=ModelSpec(source="org/original", trust_remote_code=True),
        plan=hand_plan(),
        spec=pattern_spec(),
        freeze_lm_head=True,
        total_steps=1,
        precision="fp32",
        fingerprint="x",
        final_model_dir=tmp_path / "f",
        resume_root=tmp_path,
        run_dir=tmp_path,
    )
    loaded = loop._load(config, str(remote_dir), "float32", torch.device("cpu"))
    assert type(loaded.model).__name__ == "RemoteLlamaForCausalLM"
