"""`interlace run -f prunejob.yaml`: the whole pipeline, locally or as the RayJob entrypoint.

The YAML is validated first (a bad field exits 2 naming it, before torch or Ray is imported). Then
Ray is started (`ray.init()`: a local cluster, or the cluster named by RAY_ADDRESS when the job runs
inside one), the reporters are assembled (console, progress.jsonl in the output directory, and the
Kubernetes status sink when the operator set INTERLACE_PRUNEJOB), and interlace.pipeline.run runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from interlace.errors import InterlaceError
from interlace.settings import settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="run a PruneJob: analyze -> plan -> prune -> finetune -> evaluate -> save",
        description="Run the INTERLACE pipeline described by a PruneJob YAML (the same file the "
        "operator takes), on a local Ray cluster or the one RAY_ADDRESS names.",
    )
    p.add_argument("-f", "--file", required=True, type=Path, help="PruneJob YAML")
    p.add_argument(
        "--local",
        action="store_true",
        help="always start a private local Ray cluster, even if RAY_ADDRESS is set",
    )
    p.add_argument("--output", help="output directory or URI (overrides spec.output.uri)")
    p.add_argument("--workers", type=int, help="Ray Train workers (overrides spec.resources.workers)")
    p.add_argument("--max-steps", type=int, help="stop finetuning after N optimizer steps")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary (JSON) on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    from interlace.schema.spec import load_prunejob

    job = load_prunejob(args.file)  # SpecError (exit 2) before anything heavy
    if args.workers is not None and args.workers < 1:
        raise InterlaceError(f"--workers {args.workers}: need at least 1")
    if args.max_steps is not None and args.max_steps < 1:
        raise InterlaceError(f"--max-steps {args.max_steps}: need at least 1")
    if args.output:
        job.spec.output.uri = args.output
    if args.workers is not None:
        job.spec.resources.workers = args.workers
    if args.max_steps is not None:
        job.spec.finetune.max_steps = args.max_steps

    from interlace.pipeline.run import resolve_output_dir

    output_dir = resolve_output_dir(job.spec.output.uri, job=job)
    _require_shared_work_dir(job, output_dir, local=args.local)

    from interlace.runtime.console import ConsoleReporter, summary_table
    from interlace.runtime.progress import JsonlReporter, MultiReporter, Reporter

    console = ConsoleReporter()
    sinks: list[Reporter] = [console]
    kube = _kube_reporter()
    if kube is not None:
        sinks.append(kube)
    output_dir.mkdir(parents=True, exist_ok=True)
    sinks.append(JsonlReporter(output_dir / "progress.jsonl"))
    reporter = MultiReporter(*sinks)

    from interlace.cli.jsonout import print_json, stdout_to_stderr

    with stdout_to_stderr(args.json):  # --json: stdout carries only the summary document
        if job.spec.finetune.enabled and not job.spec.dry_run:  # only finetuning needs Ray
            from interlace.runtime.ray_cluster import start_ray

            start_ray(local=args.local)

        from interlace.pipeline.run import run_pipeline

        try:
            if job.spec.pruning.is_sweep:  # spec.pruning.ratios: one analysis, a variant per ratio
                from interlace.pipeline.sweep import run_sweep

                sweep = run_sweep(job, output_dir=output_dir, reporter=reporter)
            elif job.spec.pruning.target is not None:  # probes of nested plans, then the full run
                from interlace.pipeline.target import run_target

                results = run_target(job, output_dir=output_dir, reporter=reporter)
            else:
                results = run_pipeline(job, output_dir=output_dir, reporter=reporter)
        finally:
            reporter.close()
    if job.spec.pruning.is_sweep:
        if args.json:
            print_json(sweep.to_dict())
        else:
            console.console.print(sweep.table())
        return 0
    if args.json:
        from interlace.api import result_of_run

        print_json(result_of_run(output_dir, results).to_dict())
    else:
        console.console.print(summary_table(results, output_dir=output_dir))
        retention = results.retention_line()
        if retention is not None:  # the last line: out of domain (the headline), in domain beside it
            console.console.print(retention, highlight=False)
    return 0


def _require_shared_work_dir(job: Any, output_dir: Path, *, local: bool) -> None:
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


def _kube_reporter() -> Any:
    """The PruneJob status sink when running under the operator (INTERLACE_PRUNEJOB set), else None."""
    if not settings().prunejob:
        return None
    try:
        from interlace.runtime.kube import from_env
    except ModuleNotFoundError as err:
        if err.name and err.name.startswith("interlace.runtime.kube"):
            return None
        raise
    return from_env()
