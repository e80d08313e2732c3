"""Hub-native outputs: the card's metadata through huggingface_hub (license, base_model, datasets, tags,
model-index), the token through huggingface_hub's own lookup, upload_large_folder for large models."""

from __future__ import annotations

import logging
import types
from pathlib import Path

import huggingface_hub.constants
import pytest
from huggingface_hub import ModelCard

from interlace.errors import InterlaceError
from interlace.schema.spec import OutputSpec, PruneJobSpec, parse_prunejob
from interlace.stages.publish import publish
from interlace.stages.publish.card import base_info
from interlace.stages.publish.hub import LARGE_FOLDER_BYTES, HubUploadPlan, hub_token, uses_large_folder
from tests.publish.helpers import PLAN, job, results, saved_pruned


def _spec(source: str, **extra: object) -> PruneJobSpec:
    doc = {"model": {"source": source}, "pruning": {"ratio": 0.25}, **extra}
    return parse_prunejob({"apiVersion": "interlace.dev/v1alpha1", "kind": "PruneJob", "spec": doc}).spec


def test_card_metadata_reads_back_with_huggingface_hub(tmp_path: Path) -> None:
    model_dir, _, _ = saved_pruned(tmp_path)
    publish(model_dir, OutputSpec(uri=str(tmp_path / "o")), plan=PLAN, results=results(), job=job())
    card = ModelCard.load(tmp_path / "o" / "model" / "README.md")
    data = card.data
    assert data.base_model == "meta-llama/Llama-3.2-1B-Instruct"
    assert data.datasets == ["HuggingFaceM4/FineVision"]
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert {"interlace", "layer-pruning", "pruned"} <= set(data.tags)
    assert data.model_name == "llama-interlace-25"
    got = {(r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}
    assert got == {
        ("shapes", "accuracy"): 72.0,
        ("shapes", "relative_performance"): 90.0,
        ("perplexity", "perplexity"): 6.25,
        ("perplexity", "relative_performance"): 80.0,
    }
    perplexity = next(r for r in data.eval_results if r.metric_type == "perplexity")
    assert perplexity.dataset_type == "HuggingFaceM4/FineVision" and perplexity.task_type == "text-generation"
    assert "| License | see the base model |" in card.text  # not cached here, offline: unknown, said so


def test_builtin_model_has_base_model_and_license(tmp_path: Path) -> None:
    info = base_info(_spec("builtin:smollm2-135m"))
    assert (info.base_model, info.license) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    # the converted builtin checkpoint directory, given as a path, is recognised by its marker
    d = tmp_path / "smollm2"
    d.mkdir()
    (d / "interlace-builtin.json").write_text('{"source": "builtin:smollm2-135m"}')
    assert base_info(_spec(str(d))).license == "apache-2.0"
    model_dir, _, _ = saved_pruned(tmp_path)
    j = job()
    j.spec.model.source = "builtin:smollm2-135m"
    publish(model_dir, OutputSpec(uri=str(tmp_path / "o")), plan=PLAN, results=results(), job=j)
    data = ModelCard.load(tmp_path / "o" / "model" / "README.md").data
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and data.license == "apache-2.0"


def test_license_comes_from_the_base_models_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a hub model in the local hub cache: its README.md's license, license_name and license_link
    cache = tmp_path / "hub"
    snap = cache / "models--org--gated" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (cache / "models--org--gated" / "refs").mkdir()
    (cache / "models--org--gated" / "refs" / "main").write_text("abc123")
    (snap / "README.md").write_text(
        "---\nlicense: other\nlicense_name: org-community\nlicense_link: https://example.org/licence\n---\n# m\n"
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    info = base_info(_spec("org/gated"))
    assert (info.base_model, info.license, info.license_name, info.license_link) == (
        "org/gated",
        "other",
        "org-community",
        "https://example.org/licence",
    )
    # a local checkpoint (a downloaded snapshot) with its own card
    local = tmp_path / "ckpt"
    local.mkdir()
    (local / "README.md").write_text("---\nlicense: mit\nbase_model: org/original\n---\n")
    info = base_info(_spec(str(local)))
    assert (info.base_model, info.license) == ("org/original", "mit")


def test_token_through_huggingface_hub_lookup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "INTERLACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    login = tmp_path / "token"
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(login))
    with pytest.raises(InterlaceError, match=r"hf auth login.*tokenSecret"):
        hub_token()
    # the login cache (`hf auth login` writes it; HF_TOKEN_PATH can point at a mounted Secret file)
    login.write_text("hf_fromTheLoginCache1\n")
    assert hub_token() == "hf_fromTheLoginCache1"
    with caplog.at_level(logging.INFO):
        logging.getLogger("interlace.test").info("token is hf_fromTheLoginCache1")
    assert "hf_fromTheLoginCache1" not in caplog.text and "***" in caplog.text  # registered for redaction
    monkeypatch.setenv("HF_TOKEN", "hf_fromTheEnvironment2")
    assert hub_token() == "hf_fromTheEnvironment2"
    # the publishing token the operator mounts when the job also has a separate read token
    monkeypatch.setenv("INTERLACE_HUB_TOKEN", "hf_writeTokenForOutput3")
    assert hub_token() == "hf_writeTokenForOutput3"


def test_large_models_use_upload_large_folder_where_available() -> None:
    small = HubUploadPlan(repo_id="a/b", private=True, files=[("model.safetensors", 10)])
    large = HubUploadPlan(repo_id="a/b", private=True, files=[("model.safetensors", LARGE_FOLDER_BYTES)])
    hub1 = types.SimpleNamespace(upload_folder=None, upload_large_folder=None)  # huggingface_hub 1.x
    hub2 = types.SimpleNamespace(upload_folder=None)  # 2.x: upload_folder resumes and batches itself
    assert uses_large_folder(large, hub1) and not uses_large_folder(small, hub1)
    assert not uses_large_folder(large, hub2)
