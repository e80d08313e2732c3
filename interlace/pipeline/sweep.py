"""A ratio sweep: ONE analysis of the base model, then one pruned variant per ratio.

    interlace sweep -f prunejob.yaml --ratios 0.1,0.15,0.2,0.25      (or interlace.sweep(job, ratios))

The layer scores do not depend on the ratio, so they are computed once, by a dry run of the
pipeline in ``<output>/analysis/`` (``scores.json``, the first ratio's plan, heatmap), and every
ratio gets its plan from them. Each variant then runs the rest of the pipeline
(surgery -> finetune -> evaluate -> publish) in its own directory ``<output>/ratio-<r>/``, published
under its own output (``<uri>/ratio-<r>``; for the Hub ``<repo>-ratio-<r>``). A variant directory
holds its plan.json, a link to the shared scores.json (so the pipeline reuses the plan instead of
analysing again), and the usual artifacts. ``<output>/sweep.json`` holds the table of variants
(ratio, layers, parameters, retention, speedups, output).

A PruneJob asks for a sweep with ``spec.pruning.ratios`` (``interlace run`` and the operator's
RayJob then land here); ``interlace sweep --ratios`` overrides the job's amount. The variants run
concurrently, all started at once and interleaved by the Ray cluster's scheduler, each
its own Ray Train run; status.results.variants is the table, updated as each variant moves, and
status.results.summary its one-line form (a kubectl column). Each variant reloads the base model
for its surgery and evaluation (the base scores are recomputed per variant). Only public pieces of
interlace.pipeline.run are used: run_pipeline (its dry run and its plan reuse); the inputs were checked by
the entry (interlace.pipeline.job.run_job).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

from interlace.artifacts import atomic_write_json
from interlace.errors import InterlaceError
from interlace.runtime.progress import Reporter, SubRunReporter
from interlace.schema.spec import LayerPlan, PruneJob, Results, VariantResult
from interlace.schema.status import Phase
from interlace.stages.analyze.scores import LayerScores
from interlace.stages.plan import save_plan


def variant_name(ratio: float) -> str:
    """`ratio-0.15`: the directory / prefix suffix of one variant."""
    return f"ratio-{ratio:g}"


def variant_uri(uri: str, ratio: float) -> str:
    """Where a variant is published: a sub-path of the output, or a sibling Hub repo."""
    name = variant_name(ratio)
    parsed = urlparse(uri)
    if parsed.scheme == "hf":
        return f"{uri.rstrip('/')}-{name}"
    return f"{uri.rstrip('/')}/{name}"


def check_ratios(ratios: Sequence[float], *, where: str = "ratios") -> list[float]:
    out = [float(r) for r in ratios]
    if not out:
        raise InterlaceError(f"{where}: give at least one ratio")
    for i, r in enumerate(out):
        if not math.isfinite(r) or not 0 < r < 1:
            raise InterlaceError(f"{where}[{i}]: {r} is not in (0, 1)")
    if len(set(out)) != len(out):
        raise InterlaceError(f"{where}: {out} lists a ratio twice; list each once")
    return out


@dataclass
class Variant:
    """One row of the sweep table."""

    ratio: float
    layers_dropped: int
    layers_after: int
    params_after: int | None
    retention: float | None  # relative performance, percent
    prefill_speedup: float | None
    decode_speedup: float | None
    output: str | None
    output_dir: Path
    results: Results

    def to_dict(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "layersDropped": self.layers_dropped,
            "layersAfter": self.layers_after,
            "paramsAfter": self.params_after,
            "retention": self.retention,
            "prefillSpeedup": self.prefill_speedup,
            "decodeSpeedup": self.decode_speedup,
            "output": self.output,
            "outputDir": str(self.output_dir),
        }


@dataclass
class SweepResult:
    output_dir: Path
    num_layers: int
    params_before: int | None
    variants: list[Variant] = field(default_factory=list)

    @property
    def scores_path(self) -> Path:
        return self.output_dir / "analysis" / "scores.json"

    def to_dict(self) -> dict[str, Any]:
        return {
            "outputDir": str(self.output_dir),
            "scores": str(self.scores_path),
            "layersBefore": self.num_layers,
            "paramsBefore": self.params_before,
            "variants": [v.to_dict() for v in self.variants],
        }

    def table(self) -> Any:
        """A rich Table of the variants (what `interlace sweep` prints)."""
        from rich.table import Table

        t = Table(title=f"interlace sweep: {len(self.variants)} variants of {self.num_layers} layers")
        for col in ("ratio", "layers", "parameters", "retention", "prefill", "decode", "output"):
            t.add_column(col, overflow="fold")

        def fmt(v: float | None, unit: str) -> str:
            return "n/a" if v is None else f"{v:.2f}{unit}" if unit == "x" else f"{v:.1f}{unit}"

        for v in self.variants:
            params = f"{v.params_after:,}" if v.params_after is not None else "n/a"
            t.add_row(
                f"{v.ratio:g}",
                f"{self.num_layers} -> {v.layers_after} (-{v.layers_dropped})",
                params,
                fmt(v.retention, "%"),
                fmt(v.prefill_speedup, "x"),
                fmt(v.decode_speedup, "x"),
                str(v.output),
            )
        return t


def analyze_once(
    job: PruneJob, amount: dict[str, Any], analysis_dir: Path, reporter: Reporter
) -> tuple[Results, LayerScores, set[int]]:
    """The one analysis of a job of several plans: a dry run of the pipeline in `analysis_dir`
    (scores.json, the plan for `amount`, e.g. {"ratio": 0.1}), its Results (parameters before), the
    scores, and the layers no plan may drop (spec.pruning.protectedLayers, DeepStack layers)."""
    from interlace.pipeline.run import run_pipeline
    from interlace.stages.analyze.scores import LayerScores

    dry = amount_job(job, amount, str(analysis_dir), dry_run=True)
    base = run_pipeline(dry, output_dir=analysis_dir, reporter=reporter)
    scores = LayerScores.load(analysis_dir / "scores.json")
    from interlace.stages.plan import protected_layers

    # The pipeline's own rule (protectedLayers, plus the DeepStack receivers under `protect`), with the
    # DeepStack layers the analysis recorded.
    deepstack = SimpleNamespace(deepstack_layers=list(scores.meta.get("deepstack_layers") or []))
    protected = set(protected_layers(job.spec.pruning, deepstack, num_layers=scores.num_layers))
    return base, scores, protected


def stage_plan(plan: LayerPlan, run_dir: Path, analysis_dir: Path) -> None:
    """Prepare `run_dir` so that run_pipeline runs `plan` without analysing: the plan, and a link
    to the one scores.json (the pipeline's resume path takes both)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_plan(plan, run_dir / "plan.json")
    link = run_dir / "scores.json"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.relpath(analysis_dir / "scores.json", run_dir))


def amount_job(job: PruneJob, amount: dict[str, Any], uri: str, *, dry_run: bool = False) -> PruneJob:
    """A copy of `job` with one amount (e.g. {"ratio": 0.1} or {"num_layers": 3}; a `strategy` key
    replaces strategy auto's choice) writing to `uri`, reusing a plan.json staged in its output
    directory (spec.finetune.resume)."""
    vjob = job.model_copy(deep=True)
    update = {"ratio": None, "num_layers": None, "ratios": None, "target": None, "candidates": None, "probe": None,
              **amount}
    vjob.spec.pruning = vjob.spec.pruning.model_copy(update=update)
    vjob.spec.finetune.resume = True  # what makes run_pipeline take plan.json instead of analysing
    vjob.spec.dry_run = dry_run
    vjob.spec.output.uri = uri
    return vjob


def _variant_job(job: PruneJob, ratio: float, uri: str, *, dry_run: bool = False) -> PruneJob:
    return amount_job(job, {"ratio": ratio}, uri, dry_run=dry_run)


def concurrency(job: PruneJob, n_variants: int) -> int:
    """How many of the variants' Ray Train runs of spec.resources the Ray cluster holds side by side
    (1 when Ray is not up: the stages then run in this process, one variant at a time)."""
    from interlace.pipeline.remote import ray_is_up
    from interlace.runtime.placement import train_placement

    if not ray_is_up():
        return 1
    import ray

    have = ray.cluster_resources()
    placement = train_placement(job.spec.resources)
    fits = n_variants
    for key, per_worker in placement.resources_per_worker.items():
        need = per_worker * placement.num_workers
        if need > 0:
            fits = min(fits, int(have.get(key, 0.0) // need))
    return max(1, fits)


class _Table:
    """The sweep's variants as status.results: updated by every variant's thread, sent after each change."""

    def __init__(self, parent: Reporter, base: Results, ratios: Sequence[float]) -> None:
        self.parent = parent
        self.lock = threading.Lock()
        self.base = base
        self.rows = [VariantResult(ratio=r) for r in ratios]

    def results(self) -> Results:
        return self.base.model_copy(update={"variants": list(self.rows), "summary": summary(self.rows)})

    def update(self, i: int, **fields: Any) -> None:
        with self.lock:
            self.rows[i] = self.rows[i].model_copy(update=fields)
            self.parent.results(self.results())


def summary(rows: Sequence[VariantResult]) -> str:
    """`0.1: 97.2%, 0.2: Running, 0.3: Failed`: the kubectl column of a sweep."""

    def cell(v: VariantResult) -> str:
        if v.state == "Succeeded" and v.relative_performance is not None:
            return f"{v.ratio:g}: {v.relative_performance:.1f}%"
        if v.state == "Succeeded":
            return f"{v.ratio:g}: -{v.layers_dropped}L"
        return f"{v.ratio:g}: {v.state}"

    return ", ".join(cell(v) for v in rows)


def run_sweep(
    job: PruneJob,
    ratios: Sequence[float] | None = None,
    *,
    output_dir: str | Path,
    reporter: Reporter,
) -> SweepResult:
    """One analysis, then every ratio's variant, all through interlace.pipeline.run.run_pipeline.

    `ratios` default to spec.pruning.ratios. The analysis is a dry run of the pipeline (analysis +
    the first ratio's plan) in ``<output>/analysis/``; every variant directory gets its plan, chosen
    from those scores the way the pipeline chooses (same strategy, seed, protected and DeepStack
    layers), and a link to the scores, so run_pipeline reuses the plan (its resume path) instead of
    analysing again. The variants then run concurrently (each its own Ray Train run; surgery and
    evaluation are Ray tasks), all at once, the Ray cluster's scheduler deciding what runs when. A
    failed variant does not stop the others; the sweep fails afterwards, naming it. A dry run stops
    after the plans.
    """
    from interlace.pipeline.run import run_pipeline
    from interlace.stages.plan import n_drop_for_ratio, select_layers

    if ratios is None:
        if job.spec.pruning.ratios is None:
            raise InterlaceError("spec.pruning.ratios: not set; a sweep needs the ratios to prune at")
        ratios = job.spec.pruning.ratios
    ratios = check_ratios(ratios)
    spec = job.spec
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    # ---- the one analysis (a dry run: scores and the first ratio's plan)
    analysis_dir = out / "analysis"
    try:
        base, scores, protected = analyze_once(job, {"ratio": ratios[0]}, analysis_dir, reporter)
    except InterlaceError as err:
        if "spec.pruning" in str(err) or "ratio" in str(err):
            raise InterlaceError(f"ratios[0]: {err}") from None
        raise
    num_layers = scores.num_layers

    # ---- one plan per ratio, from the same scores (the first one is the dry run's own)
    plans: list[LayerPlan] = []
    for i, r in enumerate(ratios):
        try:
            n = n_drop_for_ratio(num_layers, r)
            if i == 0:
                plan = LayerPlan.model_validate(json.loads((analysis_dir / "plan.json").read_text()))
            else:
                plan = select_layers(
                    scores,
                    n_drop=n,
                    strategy=str(spec.pruning.strategy),
                    protected=sorted(protected),
                    seed=spec.pruning.seed,
                    ratio=r,
                )
        except InterlaceError as err:
            raise InterlaceError(f"ratios[{i}]: {err}") from None
        stage_plan(plan, out / variant_name(r), analysis_dir)
        plans.append(plan)
    reporter.stage(
        Phase.PLANNING, "; ".join(f"ratio {r:g}: drop {p.drop}" for r, p in zip(ratios, plans, strict=True))
    )

    table = _Table(
        reporter,
        Results(layers_before=num_layers, params_before=base.params_before),
        ratios,
    )
    params_after = _params_after(job, plans)
    for i, plan in enumerate(plans):
        table.rows[i] = table.rows[i].model_copy(
            update={
                "layers_dropped": len(plan.drop),
                "layers_after": num_layers - len(plan.drop),
                "params_after": params_after[i],
            }
        )
    result = SweepResult(output_dir=out, num_layers=num_layers, params_before=base.params_before)
    if spec.dry_run:
        for i in range(len(plans)):
            table.rows[i] = table.rows[i].model_copy(update={"state": "Succeeded", "message": "dry run: plan only"})
        final = table.results()
        atomic_write_json(out / "results.json", final.to_wire())
        reporter.results(final)
        atomic_write_json(out / "sweep.json", result.to_dict())
        return result

    # ---- the variants, concurrently (each its own Ray Train run on the shared cluster)
    # Every variant starts at once when Ray is up: its stages are Ray tasks and its finetuning a Ray
    # Train run, so the cluster's scheduler interleaves them (a run whose workers do not fit waits for
    # resources and Ray Train retries its start; no variant holds a CPU while it waits). Bounding the
    # threads by the runs that fit side by side left CPUs idle while a variant evaluated or loaded.
    from interlace.pipeline.remote import ray_is_up

    width = len(ratios) if ray_is_up() else 1
    fits = concurrency(job, len(ratios))
    reporter.stage(
        Phase.FINETUNING,
        f"{len(ratios)} variants, {width} at once; the cluster holds {fits} of their Ray Train runs side by side",
    )
    done: dict[int, Variant] = {}
    failed: dict[int, Exception] = {}

    def one(i: int) -> None:
        r, plan = ratios[i], plans[i]
        vjob = _variant_job(job, r, variant_uri(spec.output.uri, r))
        if vjob.spec.output.hub is not None:
            vjob.spec.output.hub.repo = f"{vjob.spec.output.hub.repo}-{variant_name(r)}"
        vdir = out / variant_name(r)
        table.update(i, state="Running")
        try:
            # its stages and progress name the ratio; its results become its row of the table below
            sub = SubRunReporter(reporter, f"ratio {r:g}: ", table.lock)
            res = run_pipeline(vjob, output_dir=vdir, reporter=sub)
            used = json.loads((vdir / "plan.json").read_text())
            if used["drop"] != plan.drop:
                raise RuntimeError(f"variant {r:g} did not keep the sweep's plan {plan.drop} (got {used['drop']})")
        except Exception as err:  # recorded; the sweep fails after the other variants
            failed[i] = err
            table.update(i, state="Failed", message=f"{type(err).__name__}: {err}"[:1000])
            return
        done[i] = Variant(
            ratio=r,
            layers_dropped=len(plan.drop),
            layers_after=num_layers - len(plan.drop),
            params_after=res.params_after,
            retention=res.relative_performance,
            prefill_speedup=res.prefill_speedup,
            decode_speedup=res.decode_speedup,
            output=res.output_uri,
            output_dir=vdir,
            results=res,
        )
        table.update(
            i,
            state="Succeeded",
            params_after=res.params_after,
            relative_performance=res.relative_performance,
            prefill_speedup=res.prefill_speedup,
            decode_speedup=res.decode_speedup,
            output_uri=res.output_uri,
        )
        with table.lock:
            result.variants = [done[k] for k in sorted(done)]
            atomic_write_json(out / "sweep.json", result.to_dict())  # the table so far

    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="variant") as pool:
        for f in [pool.submit(one, i) for i in range(len(ratios))]:
            f.result()
    final = table.results()
    atomic_write_json(out / "results.json", final.to_wire())
    atomic_write_json(out / "sweep.json", result.to_dict())
    if failed:
        first = min(failed)
        names = ", ".join(f"ratios[{i}]={ratios[i]:g}" for i in sorted(failed))
        raise InterlaceError(
            f"{len(failed)} of {len(ratios)} variants failed ({names}); the others are published. "
            f"First error: {failed[first]}"
        ) from failed[first]
    return result


def _params_after(job: PruneJob, plans: Sequence[LayerPlan]) -> list[int]:
    """Parameters left by each plan, from the model config (meta device: no weights loaded)."""
    from interlace.pipeline.remote import model_facts

    facts = model_facts(job.spec.model)
    return [facts.total_params - sum(facts.layer_params[j] for j in plan.drop) for plan in plans]
