"""`interlace run -f prunejob.yaml`: the whole pipeline, locally or as the RayJob entrypoint.

The YAML is validated first (a bad field exits 2 naming it, before torch or Ray is imported). The
reporters here are the console and the Kubernetes status sink when the operator set
INTERLACE_PRUNEJOB; the rest (the overrides, the output, the shared-storage and input checks, Ray:
`ray.init()`, a local cluster or the one RAY_ADDRESS names, and the pipeline, sweep or target run) is
the one entry the Python API calls too: interlace.pipeline.job.run_job.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

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

    from interlace.cli.jsonout import print_json, stdout_to_stderr
    from interlace.pipeline.job import cli_arg, run_job
    from interlace.runtime.console import ConsoleReporter, summary_table
    from interlace.runtime.progress import Reporter

    console = ConsoleReporter()
    sinks: list[Reporter] = [console]
    kube = _kube_reporter()
    if kube is not None:
        sinks.append(kube)

    with stdout_to_stderr(args.json):  # --json: stdout carries only the summary document
        done = run_job(
            job, output=args.output, workers=args.workers, max_steps=args.max_steps, local=args.local,
            sinks=sinks, arg=cli_arg,
        )
    if done.sweep is not None:
        if args.json:
            print_json(done.sweep.to_dict())
        else:
            console.console.print(done.sweep.table())
        return 0
    results = done.results
    assert results is not None
    if args.json:
        from interlace.api import result_of_run

        print_json(result_of_run(done.output_dir, results).to_dict())
    else:
        console.console.print(summary_table(results, output_dir=done.output_dir))
        retention = results.retention_line()
        if retention is not None:  # the last line: out of domain (the headline), in domain beside it
            console.console.print(retention, highlight=False)
    return 0


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
