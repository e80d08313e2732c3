"""Local / PVC publishing round-trips; the model card; the Hub upload plan (no network)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from interlace.errors import InterlaceError
from interlace.schema.spec import HubOutput, OutputSpec
from interlace.stages.publish import plan_hub_upload, publish, publish_outputs, resolve_destination
from interlace.stages.publish.hub import push_to_hub
from interlace.stages.publish.retry import RetryPolicy
from tests.publish.helpers import PLAN, job, results, same_logits, saved_pruned

FAST = RetryPolicy(attempts=2, wait_initial=0.01, wait_max=0.05)


def test_local_round_trip_and_resume(tmp_path: Path) -> None:
    model_dir, pruned, _ = saved_pruned(tmp_path)
    res = results()
    out = tmp_path / "out"
    uri = publish(model_dir, OutputSpec(uri=f"file://{out}"), plan=PLAN, results=res, job=job())
    assert uri == str(out / "model") and res.output_uri == uri
    same_logits(out / "model", pruned)
    card = (out / "model" / "README.md").read_text()
    assert "Dropped layers | 2, 5" in card
    assert not (out / "model.partial").exists()

    # Publishing again copies nothing.
    again = publish_outputs(model_dir, OutputSpec(uri=str(out)), plan=PLAN, results=res, job=job())
    assert again.stats is not None and again.stats.uploaded == []
    assert set(again.stats.skipped) == {p.name for p in (out / "model").iterdir()}

    # An interrupted earlier publish: a staging dir with one good file and one corrupted one.
    out2 = tmp_path / "out2"
    staging = out2 / "model.partial"
    staging.mkdir(parents=True)
    (staging / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    good_size = (model_dir / "tokenizer_config.json").stat().st_size
    (staging / "tokenizer_config.json").write_bytes(b"x" * good_size)  # same size, wrong content
    resumed = publish_outputs(model_dir, OutputSpec(uri=str(out2)), plan=PLAN, results=res, job=job(), retry=FAST)
    assert resumed.stats is not None
    assert resumed.stats.skipped == ["config.json"]
    assert "tokenizer_config.json" in resumed.stats.uploaded
    same_logits(out2 / "model", pruned)
    assert (out2 / "model" / "tokenizer_config.json").read_bytes() == (model_dir / "tokenizer_config.json").read_bytes()


def test_pvc_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir, pruned, _ = saved_pruned(tmp_path)
    mount = tmp_path / "data"
    mount.mkdir()
    monkeypatch.setenv("INTERLACE_PVC_ROOT", str(mount))
    uri = publish(model_dir, OutputSpec(uri="pvc://models/runs/a"), plan=PLAN, results=results(), job=job())
    assert uri == str(mount / "runs" / "a" / "model")
    same_logits(Path(uri), pruned)
    with pytest.raises(InterlaceError, match=r"spec\.resources\.pvcName is 'models'"):
        resolve_destination("pvc://other/x", job=job())


@pytest.mark.parametrize(
    ("uri", "needle"),
    [("ftp://x/y", "unsupported scheme"), ("s3:///nobucket", "no bucket"), ("", "empty")],
)
def test_bad_uris(uri: str, needle: str) -> None:
    with pytest.raises(InterlaceError, match=needle):
        resolve_destination(uri)


def test_model_card_content(tmp_path: Path) -> None:
    model_dir, _, _ = saved_pruned(tmp_path)
    publish(model_dir, OutputSpec(uri=str(tmp_path / "o")), plan=PLAN, results=results(), job=job())
    card = (model_dir / "README.md").read_text()
    header = card.split("---")[1]
    assert "base_model: meta-llama/Llama-3.2-1B-Instruct" in header
    assert "pipeline_tag: text-generation" in header
    for needle in [
        "| Method | interlace |",
        "| Pruning ratio | 25.0% (2 of 8 layers; 6 remain) |",
        "| Dropped layers | 2, 5 |",
        "| Finetuned layers | 3, 6 |",
        "| Anchor layers | 1, 4 |",
        "`HuggingFaceM4/FineVision` (finevision; subsets: ai2d, chartqa; fraction 0.01",
        "| Learning rate | 2e-05 (cosine, warmup 0.03) |",
        "| Epochs / max steps | 1 / 100 |",
        "**85.0 %**",
        "Time-to-first-token speedup: **1.18x**",
        "decode speedup: **1.21x**",
        "| shapes | accuracy | 80 | 72 | 90.0 % |",
        "| perplexity | perplexity | 5 | 6.25 | 80.0 % |",
        "20.0% fewer",
    ]:
        assert needle in card, needle
    assert "hf-token" not in card and "s3-creds" not in card  # not even secret names


def test_hub_upload_plan_and_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir, _, _ = saved_pruned(tmp_path)
    (model_dir / "README.md").write_text("card")
    plan = plan_hub_upload(model_dir, HubOutput(repo="my-org/llama-interlace-25"))
    assert plan.repo_id == "my-org/llama-interlace-25" and plan.private is True
    names = [f for f, _ in plan.files]
    assert names[-1] == "README.md" and names[0] == "model.safetensors"
    assert set(names) == {p.name for p in model_dir.iterdir()}
    assert dict(plan.files)["config.json"] == (model_dir / "config.json").stat().st_size
    assert plan_hub_upload(model_dir, HubOutput(repo="a/b", private=False)).private is False

    for bad in ("no-slash", "a/b/c", "a/--b", "-a/b"):
        # The spec refuses it (interlace.schema.spec, like the CRD); the publisher checks again.
        with pytest.raises(ValidationError, match=r"is not a Hub repo id"):
            HubOutput(repo=bad)
        with pytest.raises(InterlaceError, match=r"spec.output.hub.repo"):
            plan_hub_upload(model_dir, HubOutput.model_construct(repo=bad, private=True, token_secret="hf-token"))

    # Checks run before anything is written: a bad repo id leaves no card behind.
    (model_dir / "README.md").unlink()
    with pytest.raises(InterlaceError, match=r"spec\.output\.hub\.repo"):
        bad_hub = HubOutput.model_construct(repo="bad", private=True, token_secret="hf-token")
        publish(model_dir, OutputSpec.model_construct(uri=str(tmp_path / "o"), hub=bad_hub, save_checkpoints=True),
                plan=PLAN, job=job())
    assert not (model_dir / "README.md").exists() and not (tmp_path / "o").exists()

    # No token: named, before any write.
    import huggingface_hub.constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("INTERLACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-login-cache"))
    with pytest.raises(InterlaceError, match="tokenSecret"):
        publish(model_dir, OutputSpec(uri="hf://my-org/x"), plan=PLAN, job=job())
    assert not (model_dir / "README.md").exists()

    # With a token but no network (HF_HUB_OFFLINE=1 in these tests): a clear error, not a hang.
    monkeypatch.setenv("HF_TOKEN", "hf_plantedTokenValue123")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(InterlaceError, match="HF_HUB_OFFLINE") as err:
        push_to_hub(plan, model_dir, policy=FAST)
    assert "hf_plantedTokenValue123" not in str(err.value)


def test_results_json_is_plain(tmp_path: Path) -> None:
    """Results as the pipeline stores them carry the output URI and nothing else new."""
    model_dir, _, _ = saved_pruned(tmp_path)
    res = results()
    publish(model_dir, OutputSpec(uri=str(tmp_path / "o")), plan=PLAN, results=res, job=job())
    wire = json.loads(json.dumps(res.to_wire()))
    assert wire["outputUri"] == str(tmp_path / "o" / "model") and "hubUrl" not in wire


def _snippet(card: str, model_dir: Path) -> str:
    """The card's usage snippet, pointed at `model_dir` (its MODEL line names the Hub repo or a placeholder)."""
    from interlace.stages.publish.card import MODEL_LINE

    code = card.split("## Usage", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    lines = code.splitlines()
    (i,) = [n for n, line in enumerate(lines) if line.startswith(MODEL_LINE)]
    lines[i] = f"{MODEL_LINE}{str(model_dir)!r}"
    return "\n".join(lines)


def test_the_cards_usage_snippet_runs_against_the_published_model(tmp_path: Path) -> None:
    model_dir, _, _ = saved_pruned(tmp_path)
    publish(model_dir, OutputSpec(uri=str(tmp_path / "o")), plan=PLAN, results=results(),
            job=job(hub={"repo": "my-org/llama-interlace-25"}))
    card = (model_dir / "README.md").read_text()
    assert 'MODEL = "my-org/llama-interlace-25"' in card  # the reader's copy: the Hub repo it went to
    assert "| Effective batch | 16 x 2 x 1 process(es) (1 worker(s) x 1 GPU(s)) = 32 sequences per step |" in card
    assert "| Architecture | hidden size 64, 6 decoder layers |" in card
    assert "the other one is finetuned, and the third stays frozen as an anchor" in card
    assert "eprint        = {2511.19676}" in card
    ns: dict[str, Any] = {}
    exec(compile(_snippet(card, model_dir), "card-snippet", "exec"), ns)
    assert ns["out"].shape[1] > ns["inputs"]["input_ids"].shape[1]  # it generated past the prompt
    assert ns["model"].config.num_hidden_layers == 6  # the pruned checkpoint, through transformers


def test_a_vlm_cards_usage_snippet_runs(tmp_path: Path) -> None:
    from interlace.stages.publish.card import write_card
    from tests.fixtures.tiny import save_tiny

    model_dir = save_tiny("qwen3_vl", tmp_path / "vlm")
    card = write_card(model_dir, job=None, plan=None, results=None).read_text()
    assert "AutoModelForImageTextToText" in card and 'MODEL = "path/to/model"' in card
    assert "pipeline_tag: image-text-to-text" in card
    ns: dict[str, Any] = {}
    exec(compile(_snippet(card, model_dir), "card-snippet", "exec"), ns)
    assert ns["out"].shape[1] > ns["inputs"]["input_ids"].shape[1]  # it generated past the prompt
