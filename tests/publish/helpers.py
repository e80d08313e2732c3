"""A saved pruned tiny model (through the project's surgery) and a PruneJob describing it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

from interlace.schema.spec import BenchmarkResult, LayerPlan, PruneJob, Results, parse_prunejob
from interlace.stages.prune import prune_model, save_model
from tests.fixtures.tiny import tiny

PLAN = LayerPlan(
    num_layers=8,
    strategy="interlace",
    ratio=0.25,
    drop=[2, 5],
    finetune=[3, 6],
    anchor=[1, 4],
    frozen=[0, 7],
    windows=[[1, 2, 3], [4, 5, 6]],
)


def saved_pruned(root: Path) -> tuple[Path, Any, Any]:
    """(model_dir, in-memory pruned model, tokenizer)."""
    base, tok = tiny("llama")
    pruned = prune_model(copy.deepcopy(base), PLAN, deepstack_policy="position")
    return save_model(pruned, tok, root / "run" / "finetuned", plan=PLAN), pruned, tok


def job(**output: Any) -> PruneJob:
    return parse_prunejob(
        {
            "apiVersion": "interlace.dev/v1alpha1",
            "kind": "PruneJob",
            "metadata": {"name": "llama-interlace-25", "namespace": "ml"},
            "spec": {
                "model": {"source": "meta-llama/Llama-3.2-1B-Instruct", "hfTokenSecret": "hf-token"},
                "pruning": {"ratio": 0.25},
                "finetune": {"data": {"path": "HuggingFaceM4/FineVision", "subsets": ["ai2d", "chartqa"]},
                             "learningRate": 2e-5, "maxSteps": 100},
                "output": {"uri": "s3://bucket/prefix", "s3Secret": "s3-creds", **output},
                "resources": {"pvcName": "models"},
            },
        }
    )


def results() -> Results:
    return Results(
        benchmarks=[
            BenchmarkResult(name="shapes", base=80.0, pruned=72.0, relative=90.0),
            BenchmarkResult(name="perplexity", base=5.0, pruned=6.25, relative=80.0, metric="perplexity"),
        ],
        relative_performance=85.0,
        prefill_speedup=1.18,
        decode_speedup=1.21,
        params_before=1000,
        params_after=800,
    )


@torch.no_grad()
def same_logits(model_dir: Path, original: Any) -> None:
    """Reload with plain transformers and compare logits with the in-memory model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok("The red circle is next to the blue square.", return_tensors="pt").input_ids
    assert loaded.config.num_hidden_layers == 6
    torch.testing.assert_close(loaded(input_ids=ids).logits, original(input_ids=ids).logits, rtol=0, atol=0)
