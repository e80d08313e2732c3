"""Data-parallel analysis: 2 Ray workers, each scoring its shard, give the single-process scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interlace.data import load_samples
from interlace.models.load import load_model
from interlace.runtime.placement import placement_of
from interlace.schema.spec import DataSpec, ModelSpec
from interlace.stages.analyze.calibration import calibration_batches
from interlace.stages.analyze.sharded import analyze_on_ray
from interlace.stages.analyze.similarity import analyze
from tests.fixtures.tiny import save_tiny
from tests.train.conftest import pattern_samples


@pytest.mark.ray
def test_two_ray_workers_give_the_single_process_scores(ray_session, tmp_path: Path) -> None:
    model_dir = save_tiny("llama", tmp_path / "tiny-llama")
    rows = tmp_path / "cal.jsonl"
    texts = [f"{s.turns[0].text} {s.turns[1].text} {' '.join(['word'] * (k % 9))}"
             for k, s in enumerate(pattern_samples(14))]
    rows.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    data = DataSpec(format="text", path=str(rows), fraction=1.0)
    kw = {"num_samples": 14, "batch_size": 4, "max_length": 64}  # 4 batches, the last one of 2

    loaded = load_model(str(model_dir), dtype="float32", device="cpu")
    samples = list(load_samples(data, limit=14))
    single = analyze(loaded.model, calibration_batches(samples, loaded.processor, batch_size=4, max_length=64),
                     show_progress=False)

    spread = analyze_on_ray(ModelSpec(source=str(model_dir), dtype="float32"), data,
                            placement=placement_of(2, 0), **kw)
    assert spread.meta["shards"] == 2
    assert spread.meta["num_samples"] == single.meta["num_samples"] == 14
    assert spread.meta["num_tokens"] == single.meta["num_tokens"]
    assert set(spread.scores) == set(single.scores) == {1, 2, 3}
    for k in single.scores:
        torch.testing.assert_close(torch.tensor(spread.scores[k]), torch.tensor(single.scores[k]),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.ray
def test_bench_analysis_ray_speedup_runs(ray_session, capsys: pytest.CaptureFixture[str]) -> None:
    """bench/analysis.py --ray-workers: the side-by-side 1 vs N worker timing (not its speed: CI is shared)."""
    import argparse
    import importlib.util
    import sys

    from tests.fixtures.tiny import tiny

    path = Path(__file__).resolve().parents[2] / "bench" / "analysis.py"
    spec = importlib.util.spec_from_file_location("bench_analysis", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_analysis"] = bench
    spec.loader.exec_module(bench)
    model, tok = tiny("llama")
    bench.ray_speedup(model, tok, argparse.Namespace(samples=4, batch_size=2, reps=1, ray_workers=2))
    out = capsys.readouterr().out
    assert "1 worker" in out and "2 workers" in out and "speedup 2 workers / 1 = " in out
