"""Data-parallel layer analysis on Ray: each worker scores a shard of the calibration batches.

The calibration samples (the data plan's calibration ids, interlace.data.dataplan, in their seeded
order) are cut into batches of `batch_size` in order; batch j goes to worker j % num_workers. Every
worker loads the model itself (on a GPU when the placement has them: one per worker, like Ray
Train's), reads and decodes only the rows of its own batches by index (so no sample travels through
the driver; a source without a plan, i.e. a hub subset of unknown size: the first numSamples of the
stream, read by every worker),
encodes only its own batches and returns interlace.stages.analyze.similarity.AnalysisSums;
the driver adds them up. Scores are means over samples of per-sample values, so the merged scores
equal a single-process run up to float rounding (tests/train/test_ray_analysis.py checks it on 2
workers).
"""

from __future__ import annotations

import itertools
from typing import Any

from interlace.errors import InterlaceError
from interlace.runtime.placement import TrainPlacement
from interlace.schema.spec import DataSpec, ModelSpec
from interlace.stages.analyze.scores import LayerScores
from interlace.stages.analyze.similarity import AnalysisSums


def score_shard(
    model: dict[str, Any],
    data: dict[str, Any],
    *,
    num_samples: int,
    batch_size: int,
    max_length: int,
    shard: int,
    num_shards: int,
    max_window: int,
    device: str,
    progress: Any = None,
    ids: list[str] | None = None,
) -> AnalysisSums:
    """The sums of batches shard, shard + num_shards, ... of the calibration samples.

    `ids` (the data plan's calibration rows, `<subset>#<row>`): this worker reads and decodes only the
    rows of its own batches, by index (local files or the hub's parquet row groups). None (a source
    without a plan): the first `num_samples` samples of the stream, read by every worker, which keeps
    its batches."""
    from interlace.models.load import load_model
    from interlace.stages.analyze.calibration import calibration_batches
    from interlace.stages.analyze.similarity import analysis_sums

    m = ModelSpec.model_validate(model)
    spec = DataSpec.model_validate(data)
    if ids is not None:
        from interlace.data.reader import RowReader

        own = [i for j, group in enumerate(_batches_of(ids, batch_size)) if j % num_shards == shard for i in group]
        mine = RowReader(spec, where="spec.calibration.data").samples_of(own)
    else:
        from interlace.data import load_samples

        groups = _batches_of(load_samples(spec, limit=num_samples), batch_size)
        mine = [s for j, group in enumerate(groups) if j % num_shards == shard for s in group]
    loaded = load_model(
        m.source,
        dtype=m.dtype,
        device=device,
        attn_implementation=m.attn_implementation,
        revision=m.revision,
        trust_remote_code=m.trust_remote_code,
    )
    batches = calibration_batches(mine, loaded.processor, batch_size=batch_size, max_length=max_length)
    return analysis_sums(loaded.model, batches, max_window=max_window, progress=progress, show_progress=False)


def _batches_of(samples: Any, size: int) -> list[list[Any]]:
    it = iter(samples)
    out = []
    while chunk := list(itertools.islice(it, size)):
        out.append(chunk)
    return out


def analyze_on_ray(
    model: ModelSpec,
    data: DataSpec,
    *,
    num_samples: int,
    batch_size: int,
    max_length: int,
    placement: TrainPlacement,
    max_window: int = 3,
    ids: list[str] | None = None,
) -> LayerScores:
    """Score the calibration set on `placement.num_workers` Ray tasks and merge their sums."""
    import ray

    n = placement.num_workers
    resources = dict(placement.resources_per_worker)
    # Ray's stubs type the decorated function's .remote() without its parameters: keep it untyped.
    remote: Any = ray.remote(num_cpus=resources.pop("CPU", 1.0), num_gpus=resources.pop("GPU", 0.0), max_retries=2)
    task = remote(score_shard)
    refs = [
        task.remote(
            model.model_dump(mode="json"),
            data.model_dump(mode="json"),
            num_samples=num_samples,
            batch_size=batch_size,
            max_length=max_length,
            shard=w,
            num_shards=n,
            max_window=max_window,
            device="cuda" if placement.use_gpu else "cpu",
            ids=ids,
        )
        for w in range(n)
    ]
    parts = [p for p in ray.get(refs) if p.num_samples > 0]
    if not parts:
        raise InterlaceError("spec.calibration.data yields no samples; point it at readable data")
    return AnalysisSums.merge(parts).to_scores()
