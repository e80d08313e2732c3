"""The whole INTERLACE run as one function: analyze -> plan -> surgery -> finetune -> evaluate -> save.

`run_pipeline` is what `interlace run` (locally, or as the RayJob entrypoint) and `interlace.run` reach,
through interlace.pipeline.job.run_job. Each stage is a
function of another module over plain data; this module only orders them, decides where they run,
writes the artifacts and reports the stages:

    <output>/data_plan.json   the data plan: rows per subset, training order, calibration ids
    <output>/scores.json      layer similarity scores (interlace.stages.analyze.similarity)
    <output>/plan.json        the chosen layers (interlace.stages.plan)
    <output>/heatmap.png      scores with the plan drawn on (interlace.stages.analyze.heatmap)
    <output>/checkpoints/     Ray Train checkpoints of the finetune (interlace.stages.finetune.checkpoint)
    <output>/model/           the pruned + finetuned model (interlace.stages.publish, else prune.save_model)
    <output>/results.json     layers, parameters, benchmarks (interlace.stages.evaluate)
    <output>/progress.jsonl   every reporter event (written by the caller's JsonlReporter)

Placement follows spec.resources (interlace.runtime.placement). This process (the RayJob's driver on the
small Ray head) holds no model weights: it reads the model's shape from its config, and the heavy
stages run elsewhere whenever Ray is up: the analysis data-parallel as Ray tasks
(interlace.stages.analyze.sharded), surgery, the perplexities before finetuning and the evaluation as one Ray
task each on a worker with the requested accelerator (interlace.pipeline.remote), finetuning on Ray Train.
Without Ray (a dry run started locally) they run in this process.

Inputs that can be wrong (the pruning amount, GPUs, attention kernel, GPU memory) are checked before
the model loads; the data sources and benchmarks (`check_inputs`) once, before Ray starts, by the one
entry that runs a job (interlace.pipeline.job.run_job), not again here nor per sweep variant or probe.
A restarted job with spec.finetune.resume (the default) reuses scores.json/plan.json when they fit
the spec, so it finetunes the same layers its checkpoints were made for.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from interlace.artifacts import atomic_write_json
from interlace.data.dataplan import JobDataPlan
from interlace.errors import InterlaceError
from interlace.runtime.progress import Reporter
from interlace.schema.spec import DataSpec, LayerPlan, PruneJob, PruneJobSpec, Results
from interlace.schema.status import Phase, Progress
from interlace.settings import settings
from interlace.stages.plan import save_plan


def resolve_output_dir(uri: str, *, job: PruneJob | None = None) -> Path:
    """Local directory for the run's artifacts.

    A path, file:// or pvc:// URI: that directory (interlace.stages.publish resolves it, so the model lands
    in <dir>/model next to the other artifacts). Remote URIs (s3://, hf://): a local staging
    directory; interlace.stages.publish uploads the model and the artifacts from there.
    """
    from interlace.stages.publish import resolve_destination

    dest = resolve_destination(uri, job=job)
    if dest.kind == "local":
        return Path(dest.base)
    from interlace.builtin import cache_dir

    root = settings().work_dir or cache_dir() / "runs"
    return (root / re.sub(r"[^A-Za-z0-9._-]+", "_", dest.base).strip("_")).resolve()


def _data_specs(spec: PruneJobSpec) -> list[tuple[str, DataSpec]]:
    out = [("spec.calibration.data", spec.calibration.data or spec.finetune.data)]
    if spec.finetune.enabled and not spec.dry_run:
        out.append(("spec.finetune.data", spec.finetune.data))
    if spec.evaluation.enabled and not spec.dry_run and spec.evaluation.data is not None:
        out.append(("spec.evaluation.data", spec.evaluation.data))
    if spec.evaluation.enabled and not spec.dry_run and spec.evaluation.out_of_domain_data is not None:
        out.append(("spec.evaluation.outOfDomainData", spec.evaluation.out_of_domain_data))
    return out


def check_inputs(spec: PruneJobSpec) -> None:
    """Everything cheap that can fail: data sources readable, benchmarks known. Raises InterlaceError."""
    from interlace.data import check_source

    for where, data in _data_specs(spec):
        check_source(data, where=where)
    if spec.evaluation.enabled and not spec.dry_run:
        from interlace.stages.evaluate import check_benchmarks

        check_benchmarks(spec.evaluation, finetune_data=spec.finetune.data)


def _layers_to_drop(spec: PruneJobSpec, num_layers: int) -> int:
    try:
        return spec.pruning.layers_to_drop(num_layers)
    except ValueError as err:
        raise InterlaceError(str(err)) from None


def _reusable_plan(
    out: Path, spec: PruneJobSpec, num_layers: int, n_drop: int, protected: Sequence[int]
) -> LayerPlan | None:
    """plan.json of an earlier attempt in the same output (or staged by a sweep or target search), if
    it fits this spec: its size, strategy, and no dropped layer among `protected` (the one rule,
    interlace.stages.plan.protected_layers: protectedLayers plus the DeepStack receivers under
    `protect`)."""
    f = out / "plan.json"
    if not (spec.finetune.resume and f.is_file() and (out / "scores.json").is_file()):
        return None
    try:
        plan = LayerPlan.model_validate(json.loads(f.read_text()))
    except (ValueError, OSError):
        return None
    fits = (
        plan.num_layers == num_layers
        and len(plan.drop) == n_drop
        and str(plan.strategy) == str(spec.pruning.strategy)
        and not set(plan.drop) & set(protected)
    )
    return plan if fits else None


def _stage_progress(reporter: Reporter, done: int, total: int, message: str) -> None:
    reporter.progress(
        Progress(
            percent=round(100.0 * done / max(total, 1), 2), step=done, total_steps=total, message=message
        )
    )


def run_pipeline(
    job: PruneJob,
    *,
    output_dir: str | Path,
    reporter: Reporter,
) -> Results:
    """Run the PruneJob end to end and return its Results (also written to results.json).

    spec.resources decides the placement (interlace.runtime.placement), never this process's hardware:
    Ray Train gets one worker per GPU the spec asks for, and a spec asking for GPUs that the Ray
    cluster (or this machine) lacks fails here, before any work.
    """
    from interlace.pipeline import remote
    from interlace.runtime.placement import (
        check_accelerators,
        check_attention,
        driver_device,
        train_placement,
    )

    spec = job.spec
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    check_accelerators(spec.resources)
    check_attention(spec)
    placement = train_placement(spec.resources)
    _check_gpu_memory(spec)  # the worst case for any plan, from the model config alone

    # ---- 1. analysis: layer similarity scores on calibration samples (on the workers when Ray is up)
    reporter.stage(Phase.ANALYZING, f"reading the config of {spec.model.source}")
    facts = remote.model_facts(spec.model)  # config on the meta device: this process holds no weights
    num_layers = facts.num_layers
    n_drop = _layers_to_drop(spec, num_layers)
    from interlace.stages.plan import protected_layers, select_layers

    protected = protected_layers(spec.pruning, facts, num_layers=num_layers)
    plan = _reusable_plan(out, spec, num_layers, n_drop, protected)
    data_plan = _data_plan(spec, out)
    if plan is None:
        scores = _analyze(spec, reporter, placement, driver_device(spec.resources), data_plan)
        scores.save(out / "scores.json")
        # ---- 2. plan
        reporter.stage(Phase.PLANNING, f"{spec.pruning.strategy}: drop {n_drop} of {num_layers} layers")
        plan = select_layers(
            scores,
            n_drop=n_drop,
            strategy=str(spec.pruning.strategy),
            protected=protected,
            seed=spec.pruning.seed,
            ratio=spec.pruning.ratio,
        )
        save_plan(plan, out / "plan.json")
    else:
        from interlace.stages.analyze.scores import LayerScores

        scores = LayerScores.load(out / "scores.json")
        reporter.stage(Phase.PLANNING, "reusing plan.json of an earlier attempt (spec.finetune.resume)")
    reporter.plan(plan)
    _heatmap(scores, plan, out / "heatmap.png")

    dropped = sum(facts.layer_params[i] for i in plan.drop)
    results = Results(
        layers_before=num_layers,
        layers_after=num_layers - len(plan.drop),
        params_before=facts.total_params,
        params_after=facts.total_params - dropped,
    )
    if spec.dry_run:
        atomic_write_json(out / "results.json", results.to_wire())
        reporter.results(results)
        return results
    _check_gpu_memory(spec, plan=plan, total_params=facts.total_params)

    # ---- 3. surgery, on a worker: the pruned model goes to <output>/pruned
    pruned_dir = out / "pruned"
    remote.on_worker(
        remote.prune_to_dir,
        placement,
        model=spec.model,
        plan=plan,
        deepstack_policy=str(spec.pruning.deepstack_policy),
        out_dir=str(pruned_dir),
    )

    # ---- 4. interleaved finetuning on Ray Train
    before_ft: list[tuple[str, str | None, float, float]] | None = None
    final_dir = pruned_dir
    if spec.finetune.enabled:
        if _wants_perplexity(spec):
            before_ft = remote.on_worker(
                remote.perplexities,
                placement,
                model=spec.model,
                pruned_dir=str(pruned_dir),
                evaluation=spec.evaluation,
                finetune_data=spec.finetune.data,
                max_length=spec.finetune.max_length,
            )
        from interlace.runtime.placement import describe, loader_cpus

        reporter.stage(Phase.FINETUNING, f"layers {plan.finetune} on {describe(placement)}")
        from interlace.stages.finetune.driver import finetune

        ft = finetune(
            pruned_dir,
            plan,
            spec.finetune,
            output_dir=out,
            model=spec.model,
            placement=placement,
            freeze_lm_head=spec.pruning.freeze_lm_head,
            reporter=reporter,
            num_samples=data_plan.finetune.num_finetune if data_plan else _epoch_size(spec.finetune.data),
            final_model_dir=out / "finetuned",
            data_plan=data_plan.finetune if data_plan else None,
            loader_cpus=loader_cpus(spec.resources),
        )
        final_dir = ft.model_dir

    # ---- 5. evaluation, on a worker: base vs pruned(+finetuned) on the same samples
    if spec.evaluation.enabled:
        reporter.stage(Phase.EVALUATING, ", ".join(spec.evaluation.benchmarks))
        from interlace.stages.evaluate import benchmark_result

        results = remote.on_worker(
            remote.evaluate_models,
            placement,
            model=spec.model,
            final_dir=str(final_dir),
            evaluation=spec.evaluation,
            finetune_data=spec.finetune.data,
            max_length=spec.finetune.max_length,
        )
        if before_ft is not None:
            # The pruned model before finetuning, on the same samples: what finetuning recovered.
            # Appended after relativePerformance was computed, which stays about the final model.
            results.benchmarks = [
                *results.benchmarks,
                *(
                    benchmark_result(f"{label} before finetuning", b, p, metric="perplexity")
                    for label, _domain, b, p in before_ft
                ),
            ]

    # ---- 6. publish (or save) the model
    reporter.stage(Phase.PUBLISHING, spec.output.uri)
    results.output_uri = _publish(job, final_dir, out, plan, results)
    atomic_write_json(out / "results.json", results.to_wire())
    reporter.results(results)
    # Staging copies are no longer needed once the model is published; checkpoints only if asked.
    for staging in (out / "pruned", out / "finetuned"):
        shutil.rmtree(staging, ignore_errors=True)
    if not spec.output.save_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return results


def _check_gpu_memory(
    spec: PruneJobSpec, *, config: Any = None, plan: LayerPlan | None = None, total_params: int | None = None
) -> None:
    """GPU finetuning only: refuse a plan whose estimated memory per GPU exceeds spec.resources.gpuMemory."""
    from interlace.runtime.placement import check_memory, needed_gpus

    if needed_gpus(spec.resources) == 0 or not spec.finetune.enabled or spec.dry_run:
        return
    if config is None:
        from interlace.models.load import load_config

        config = load_config(
            spec.model.source, revision=spec.model.revision, trust_remote_code=spec.model.trust_remote_code
        )
    positions = None
    if plan is not None:
        from interlace.stages.finetune.freeze import finetune_positions

        positions = finetune_positions(plan)
    check_memory(spec, config, positions=positions, total_params=total_params)


def _data_plan(spec: PruneJobSpec, out: Path) -> JobDataPlan | None:
    """The data plan (interlace.data.dataplan), made once here before any worker and written to
    <output>/data_plan.json, when both sources can be read by row index (local shards, builtin
    corpora, hub subsets of known size: FineVision); None for a hub subset of unknown size (another
    dataset without split metadata, read through the stream with maxSamples)."""
    from interlace.data.dataplan import job_plan
    from interlace.data.reader import check_hub_files, plan_readable

    finetunes = spec.finetune.enabled and not spec.dry_run
    if not finetunes and spec.calibration.data is not None and spec.calibration.data != spec.finetune.data:
        # Nothing reads the finetuning data (a dry run, or no finetuning) and calibration has data of
        # its own: the input check did not look at the finetuning source, so a source that cannot be
        # resolved here (a hub id, offline) means no plan; calibration then reads its own rows.
        try:
            plan_readable(spec.finetune.data)
        except InterlaceError:
            return None
    sources = [spec.finetune.data] + ([spec.calibration.data] if spec.calibration.data else [])
    if not all(plan_readable(d) for d in sources):
        return None
    dp = job_plan(spec)
    # The hub files of what this run reads (as _data_specs: a dry run reads no finetuning rows, so its
    # plan of them is ids only, from the table, and needs no hub).
    if finetunes:
        check_hub_files(spec.finetune.data, dp.finetune, where="spec.finetune.data")
    if dp.calibration is not dp.finetune and spec.calibration.data is not None:
        check_hub_files(spec.calibration.data, dp.calibration, where="spec.calibration.data")
    elif not finetunes:  # calibration drawn from the finetuning data, which nothing else lists here
        check_hub_files(spec.finetune.data, dp.calibration, where="spec.calibration.data")
    atomic_write_json(out / "data_plan.json", dp.to_wire())
    return dp


def _analyze(
    spec: PruneJobSpec, reporter: Reporter, placement: Any, device: str, data_plan: JobDataPlan | None = None
) -> Any:
    """Layer scores: data-parallel on the Ray workers when Ray is up (interlace.stages.analyze.sharded: one
    shard of the calibration batches per worker, the sums merged here), else in this process. With a
    data plan the calibration rows are its calibration ids, each read only by the worker scoring it."""
    from interlace.pipeline.remote import ray_is_up
    from interlace.stages.analyze.sharded import analyze_on_ray, score_shard

    cal = spec.calibration
    data = cal.data or spec.finetune.data
    ids = None
    if data_plan is not None:
        cp = data_plan.calibration
        ids = [cp.row_id(r) for r in cp.calibration]
    if ray_is_up():
        from interlace.runtime.placement import describe

        _stage_progress(reporter, 0, cal.num_samples, f"calibration samples on {describe(placement)}")
        scores = analyze_on_ray(
            spec.model,
            data,
            num_samples=cal.num_samples,
            batch_size=cal.batch_size,
            max_length=cal.max_length,
            placement=placement,
            ids=ids,
        )
        n = int(scores.meta["num_samples"])
        _stage_progress(reporter, n, n, f"calibration sample {n}/{n}")
        return scores

    def progress(done: int, total: int | None) -> None:
        total = total or cal.num_samples
        _stage_progress(reporter, done, total, f"calibration sample {done}/{total}")

    sums = score_shard(
        spec.model.model_dump(mode="json"),
        data.model_dump(mode="json"),
        num_samples=cal.num_samples,
        batch_size=cal.batch_size,
        max_length=cal.max_length,
        shard=0,
        num_shards=1,
        max_window=3,
        device=device,
        progress=progress,
        ids=ids,
    )
    if sums.num_samples == 0:
        raise InterlaceError("spec.calibration.data yields no samples; point it at readable data")
    return sums.to_scores()


def _heatmap(scores: Any, plan: LayerPlan, path: Path) -> None:
    from interlace.stages.analyze import heatmap

    heatmap.heatmap(scores, path, plan=plan)


def _epoch_size(data: DataSpec) -> int:
    """Samples in one epoch, from the data plan (rows picked per subset): no row is read. Rows that
    turn out malformed make the real epoch a little shorter; the sample stream then wraps around."""
    from interlace.data import plan as data_plan

    return sum(p.quota for p in data_plan(data))


def _wants_perplexity(spec: PruneJobSpec) -> bool:
    return spec.evaluation.enabled and "perplexity" in spec.evaluation.benchmarks


def _publish(job: PruneJob, model_dir: Path, out: Path, plan: LayerPlan, results: Results) -> str:
    """The model card goes into model_dir, then the model to <output>/model (or the bucket/Hub)."""
    from interlace.stages.publish import publish

    return publish(model_dir, job.spec.output, plan=plan, results=results, job=job, artifacts_dir=out)
