"""A probe: one plan of a job of several plans, run briefly to measure what it keeps.

A retention target (interlace.pipeline.target) probes the nested plans of one strategy, strategy auto
(interlace.pipeline.auto) one plan per candidate strategy; both through `run_probe`. A probe is the
pipeline on the plan (surgery, `proxy_steps` of finetuning, evaluation on spec.evaluation) in its own
directory, reusing the one analysis (its scores.json is linked, the plan staged), saved there and never
published. Its retention is the run's relativePerformance as a fraction (the out-of-domain perplexity
when spec.evaluation.outOfDomainData is set).
"""

from __future__ import annotations

from pathlib import Path

from interlace.pipeline.sweep import amount_job, stage_plan
from interlace.runtime.progress import Reporter
from interlace.schema.spec import LayerPlan, PruneJob, Results


def run_probe(
    job: PruneJob,
    plan: LayerPlan,
    *,
    probe_dir: Path,
    analysis_dir: Path,
    proxy_steps: int,
    reporter: Reporter,
) -> Results:
    """Run `plan` (of the scores in `analysis_dir`) with `proxy_steps` of finetuning (0: none) in
    `probe_dir`; its model is saved in `probe_dir/model`, never published. `reporter` gets its events
    (a SubRunReporter that names the probe)."""
    from interlace.pipeline.run import run_pipeline

    stage_plan(plan, probe_dir, analysis_dir)
    probe = amount_job(
        job, {"num_layers": len(plan.drop), "strategy": plan.strategy}, str(probe_dir / "model")
    )
    probe.spec.output.hub = None  # probes are saved next to the job's artifacts, never published
    probe.spec.output.save_checkpoints = False
    if proxy_steps == 0:
        probe.spec.finetune.enabled = False
    else:
        probe.spec.finetune.max_steps = proxy_steps
        probe.spec.finetune.checkpoint_every_steps = proxy_steps
    return run_pipeline(probe, output_dir=probe_dir, reporter=reporter)


def retention_of(res: Results) -> float | None:
    """A probe's retention, a fraction (0.9 = 90%), or None when its evaluation gave none."""
    return None if res.relative_performance is None else res.relative_performance / 100
