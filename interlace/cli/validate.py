"""`interlace validate -f FILE [-f FILE ...] [--cluster] [--json]`: check PruneJobs without running them.

The spec models (what `interlace run` and the operator apply), then everything checkable offline:
the model source and its layer count against the pruning amount, every data source, the benchmarks,
the output (interlace.pipeline.validate). No Ray, no torch, no network. Exit 0 when every file is valid,
2 otherwise; every error on its own line, naming its field. `--json` prints one report per file
(a list when several files are given) on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "validate",
        help="check a PruneJob file (schema, model, data, output) without running anything",
        description="Validate PruneJob YAML files as `interlace run` and the operator would, plus offline "
        "checks of the model, data sources, benchmarks and output. Exit 2 if any error.",
    )
    p.add_argument(
        "-f", "--file", required=True, type=Path, action="append", help="PruneJob YAML (repeatable)"
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help="check as a job the operator runs: durable output required; local paths name the Ray pods' filesystem",
    )
    p.add_argument("--json", action="store_true", help="print the report(s) as JSON on stdout")
    return p


def run(args: argparse.Namespace) -> int:
    from interlace.pipeline.validate import validate

    reports = [validate(f, cluster=args.cluster) for f in args.file]
    if args.json:
        docs = [r.to_dict() for r in reports]
        sys.stdout.write(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2) + "\n")
    else:
        for r in reports:
            for w in r.warnings:
                print(f"{r.source}: warning: {w}", file=sys.stderr)
            for e in r.errors:
                print(f"{r.source}: error: {e}", file=sys.stderr)
            if r.ok and r.job is not None:
                ratios, target = r.job.spec.pruning.ratios, r.job.spec.pruning.target
                amount = (
                    f"retention target {target.min_retention:g}, dropping at most {r.layers_to_drop} of "
                    f"{r.num_layers} layers"
                    if target is not None and r.layers_to_drop is not None
                    else
                    f"{len(ratios)} variants, dropping up to {r.layers_to_drop} of {r.num_layers} layers"
                    if ratios is not None and r.layers_to_drop is not None
                    else f"drops {r.layers_to_drop} of {r.num_layers} layers"
                    if r.layers_to_drop is not None
                    else "layer count checked when the job starts"
                )
                print(
                    f"{r.source}: valid PruneJob {r.job.metadata.name} ({r.job.spec.model.source}, {amount})"
                )
    return 0 if all(r.ok for r in reports) else 2
