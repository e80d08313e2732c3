"""`interlace evaluate` on saved tiny models (in-process CLI: the same code path as the console script)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from interlace.cli import main
from interlace.stages.prune import prune_model, save_model
from tests.evaluation.helpers import plan_dropping
from tests.fixtures.tiny import save_tiny, tiny


def test_evaluate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base_dir = save_tiny("llama", tmp_path / "base")
    model, tok = tiny("llama")
    pruned_dir = save_model(prune_model(copy.deepcopy(model), plan_dropping(8, [1, 4]), deepstack_policy="position"),
                            tok, tmp_path / "pruned")
    vqa = tmp_path / "set.jsonl"
    vqa.write_text(json.dumps({"question": "Which is red?", "choices": ["a", "b"], "answer": "A"}) + "\n"
                   + json.dumps({"question": "Say yes.", "answer": "yes"}) + "\n")
    data = tmp_path / "held.jsonl"
    data.write_text(json.dumps({"text": "A small red circle next to a square."}) + "\n")
    out = tmp_path / "r" / "results.json"
    rc = main(["evaluate", "--base", str(base_dir), "--pruned", str(pruned_dir), "--benchmarks", "perplexity",
               str(vqa), "--data", str(data), "--data-format", "text", "--no-speed", "--output", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [b["name"] for b in res["benchmarks"]] == ["perplexity", "set"]
    assert res["layersBefore"] == 8 and res["layersAfter"] == 6
    assert "prefillSpeedup" not in res
    assert json.loads(capsys.readouterr().out) == res


def test_evaluate_command_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", "--base", "x", "--pruned", "y", "--benchmarks", "missing.jsonl", "--output",
               str(tmp_path / "r.json")])
    assert rc == 2
    assert "benchmarks[0]" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()
    rc = main(["evaluate", "--base", "x", "--pruned", "y", "--benchmarks", "perplexity", "--batch-size", "0",
               "--output", str(tmp_path / "r.json")])
    assert rc == 2 and "batch_size" in capsys.readouterr().err
