"""The one entry that runs a PruneJob: what `interlace run` (interlace.cli.run) and the Python API's
`interlace.run` / `interlace.sweep` (interlace.api) call.

In this order, each step before anything the next one costs:

1. the overrides (output, workers, max steps; a sweep's ratios replace the job's amount), each checked;
2. the output directory (interlace.pipeline.run.resolve_output_dir; nothing written yet);
3. on a Ray cluster of several pods, the shared-storage rule (`require_shared_work_dir`);
4. the inputs, once (interlace.pipeline.run.check_inputs: data sources, benchmarks);
5. the reporters: the caller's sinks plus `<output>/progress.jsonl`;
6. Ray, when finetuning needs it (`local`: a private local cluster, else the one RAY_ADDRESS names);
7. the run: a sweep (spec.pruning.ratios), a target search (spec.pruning.target), strategy auto's probes
   of its candidates (spec.pruning.strategy: auto) or one pipeline.

run_pipeline, run_sweep, run_target and run_auto do not check the inputs themselves: this entry has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from interlace.errors import InterlaceError
from interlace.runtime.progress import Reporter
from interlace.schema.spec import PruneJob, Results, Strategy
from interlace.settings import settings

if TYPE_CHECKING:
    from interlace.pipeline.sweep import SweepResult


def api_arg(name: str, value: object) -> str:
    """How the Python API names an argument in an error: `workers=0`."""
    return f"{name}={value}"


def cli_arg(name: str, value: object) -> str:
    """How the command line names an option in an error: `--max-steps 0`."""
    return f"--{name.replace('_', '-')} {value}"


@dataclass
class JobRun:
    """What a run left: its output directory and its Results, or the SweepResult of a sweep."""

    output_dir: Path
    results: Results | None = None
    sweep: SweepResult | None = None


def apply_overrides(
    job: PruneJob,
    *,
    output: str | Path | None = None,
    workers: int | None = None,
    max_steps: int | None = None,
    ratios: Sequence[float] | None = None,
    arg: Callable[[str, object], str] = api_arg,
) -> None:
    """The caller's overrides, checked, into `job.spec` (in place)."""
    if ratios is not None:
        from interlace.pipeline.sweep import check_ratios

        check_ratios(ratios)
        if job.spec.pruning.strategy == Strategy.AUTO:
            raise InterlaceError(
                f"{arg('ratios', ','.join(f'{r:g}' for r in ratios))}: spec.pruning.strategy auto chooses one plan "
                "and cannot run a sweep; pick one strategy for the sweep"
            )
        job.spec.pruning = job.spec.pruning.model_copy(
            update={"ratio": None, "num_layers": None, "target": None, "ratios": list(ratios)}
        )
    if workers is not None and workers < 1:
        raise InterlaceError(f"{arg('workers', workers)}: need at least 1")
    if max_steps is not None and max_steps < 1:
        raise InterlaceError(f"{arg('max_steps', max_steps)}: need at least 1")
    if output is not None:
        job.spec.output.uri = str(output)
    if workers is not None:
        job.spec.resources.workers = workers
    if max_steps is not None:
        job.spec.finetune.max_steps = max_steps


def require_shared_work_dir(job: PruneJob, output_dir: Path, *, local: bool) -> None:
    """On a Ray cluster of several pods (a RayJob), every stage's files must be where every pod can
    read them: the pruned model the workers finetune, their checkpoints, the finetuned model rank 0
    writes. A pvc:// output is such a place (the claim is mounted in every Ray pod); an s3:// or hf://
    output is staged in INTERLACE_WORK_DIR, which the operator points at the claim when
    spec.resources.pvcName is set. Without either, the workers could not read the pruned model:
    fail now, before any work, rather than after the analysis. The spec rule is
    `shared_work_dir_error`, which `interlace validate --cluster` and the operator apply before any
    pod starts; this is the last line of defence (a RayJob not made by the operator), plus the one
    case only the run sees: pvcName set but INTERLACE_WORK_DIR unset. Dry runs are not exempt: the
    workers are used whenever Ray is up."""
    if local or not settings().ray_address:
        return  # one machine: every path is shared
    from interlace.schema.spec import shared_work_dir_error

    message = shared_work_dir_error(job.spec)
    if message is not None:
        raise InterlaceError(message)
    if job.spec.output.uri.startswith("pvc://") or settings().work_dir:
        return
    raise InterlaceError(
        f"spec.resources.pvcName {job.spec.resources.pvc_name!r} is set but INTERLACE_WORK_DIR is not, so "
        f"the driver would stage an s3:// / hf:// output in {output_dir} (a path inside the head pod) that "
        "the Ray worker pods cannot read: set INTERLACE_WORK_DIR to the claim's mount in every Ray pod "
        "(the operator sets it when it builds the RayJob)"
    )


def run_job(
    job: PruneJob,
    *,
    output: str | Path | None = None,
    workers: int | None = None,
    max_steps: int | None = None,
    ratios: Sequence[float] | None = None,
    local: bool,
    sinks: Sequence[Reporter] = (),
    arg: Callable[[str, object], str] = api_arg,
) -> JobRun:
    """Run `job` (a validated PruneJob; the overrides are applied to it) end to end; see the module
    docstring for the order of the steps. `sinks` get every event and are closed at the end."""
    from interlace.pipeline.run import check_inputs, resolve_output_dir
    from interlace.runtime.progress import JsonlReporter, MultiReporter

    reporter: MultiReporter | None = None
    try:
        apply_overrides(job, output=output, workers=workers, max_steps=max_steps, ratios=ratios, arg=arg)
        output_dir = resolve_output_dir(job.spec.output.uri, job=job)
        require_shared_work_dir(job, output_dir, local=local)
        check_inputs(job.spec)  # bad data/benchmarks fail before Ray or a model starts

        output_dir.mkdir(parents=True, exist_ok=True)
        reporter = MultiReporter(*sinks, JsonlReporter(output_dir / "progress.jsonl"))

        if job.spec.finetune.enabled and not job.spec.dry_run:  # only finetuning needs Ray
            from interlace.runtime.ray_cluster import start_ray

            start_ray(local=local)

        if job.spec.pruning.is_sweep:  # spec.pruning.ratios: one analysis, a variant per ratio
            from interlace.pipeline.sweep import run_sweep

            return JobRun(output_dir, sweep=run_sweep(job, output_dir=output_dir, reporter=reporter))
        if job.spec.pruning.target is not None:  # probes of nested plans, then the full run
            from interlace.pipeline.target import run_target

            return JobRun(output_dir, results=run_target(job, output_dir=output_dir, reporter=reporter))
        if job.spec.pruning.strategy == Strategy.AUTO:  # a probe per candidate strategy, then the winner
            from interlace.pipeline.auto import run_auto

            return JobRun(output_dir, results=run_auto(job, output_dir=output_dir, reporter=reporter))
        from interlace.pipeline.run import run_pipeline

        return JobRun(output_dir, results=run_pipeline(job, output_dir=output_dir, reporter=reporter))
    finally:
        if reporter is not None:
            reporter.close()
        else:
            for sink in sinks:
                sink.close()
