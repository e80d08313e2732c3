"""The finetune loop's DataLoader workers inside a real Ray Train worker (CPU, gloo): a run on a data
plan whose rows are read by worker processes (loader_cpus 3 -> 1 worker on a 2-core machine, 2 at
most anywhere) trains on exactly the micro-batches of the in-process run: the same losses and tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from interlace.runtime.placement import placement_of
from interlace.schema.spec import DataSpec
from interlace.stages.finetune.driver import finetune
from tests.train.conftest import pattern_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_loader_workers_in_a_ray_worker_train_on_the_in_process_batches(
    ray_session, pruned_llama, tmp_path: Path
) -> None:
    model_dir, plan = pruned_llama
    (tmp_path / "data" / "words").mkdir(parents=True)
    colours = ["red", "green", "blue", "orange", "purple", "black", "white"]
    rows = [
        {"texts": [{"user": f"Name colour {k}.", "assistant": " ".join(colours[k % 7 :] + colours[: k % 7])}]}
        for k in range(40)
    ]
    (tmp_path / "data" / "words" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = pattern_spec(
        max_steps=3, checkpoint_every_steps=10, data=DataSpec(path=str(tmp_path / "data"), fraction=1.0)
    )
    runs = [
        finetune(
            model_dir,
            plan,
            spec,
            output_dir=tmp_path / f"run-{cpus}",
            placement=placement_of(1, 0),
            loader_cpus=cpus,
        )
        for cpus in (None, 3.0)
    ]
    inline, workers = runs
    assert inline.steps == workers.steps == 3
    assert workers.losses == inline.losses and workers.tokens == inline.tokens
