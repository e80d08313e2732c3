"""`interlace data -f PRUNEJOB.yaml [--json] [--head N]`: the data plan a job would use, without a model.

What the job's workers will read, computed as the pipeline computes it (interlace.data.dataplan.job_plan)
from the subset table alone: rows per subset for finetuning and calibration, the totals, and the first
N training ids in training order. No model, no torch, no image decoded; seconds for local shards.
Hub sources need the hub (their subset list and sizes); sizes that cannot be had are an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "data",
        help="show a PruneJob's data plan: rows per subset for calibration and finetuning, training order",
        description="Compute the data plan of a PruneJob (no model, no GPU): the finetuning and calibration "
        "rows per subset, the totals and the first training ids in order.",
    )
    p.add_argument("-f", "--file", required=True, type=Path, help="PruneJob YAML")
    p.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    p.add_argument("--head", type=int, default=10, help="training ids to list, in order (default 10)")
    return p


def run(args: argparse.Namespace) -> int:
    from interlace.data.dataplan import job_plan
    from interlace.errors import InterlaceError
    from interlace.schema.spec import load_prunejob

    if args.head < 0:
        raise InterlaceError(f"--head {args.head}: must be >= 0")
    job = load_prunejob(args.file)
    dp = job_plan(job.spec)
    wire = dp.to_wire(head=args.head)
    if args.json:
        sys.stdout.write(json.dumps(wire, indent=2) + "\n")
        return 0
    ft, cp = dp.finetune, dp.calibration
    print(f"finetune data: {ft.source} (seed {ft.seed}, {len(ft.subsets)} subsets)")
    same = cp is ft
    if not same:
        print(f"calibration data: {cp.source} (seed {cp.calibration_seed}, {len(cp.subsets)} subsets)")
    width = max([len(s.name) for s in ft.subsets + cp.subsets] + [6])
    print(f"  {'subset':<{width}} {'rows':>10} {'finetune':>9} {'calib':>7}")
    cal = {s.name: len(s.calibration) for s in cp.subsets}
    for s in ft.subsets:
        print(f"  {s.name:<{width}} {s.num_rows:>10} {len(s.finetune):>9} {cal.get(s.name, 0) if same else '-':>7}")
    if not same:
        for s in cp.subsets:
            print(f"  {s.name:<{width}} {s.num_rows:>10} {'-':>9} {len(s.calibration):>7}  (calibration data)")
    print(
        f"  {'total':<{width}} {sum(s.num_rows for s in ft.subsets):>10} {ft.num_finetune:>9} "
        f"{len(cp.calibration):>7}"
    )
    print(
        f"calibration seed {cp.calibration_seed}; plan fingerprint {ft.fingerprint()}; "
        f"finetune fingerprint {ft.finetune_fingerprint()} (recorded in checkpoints)"
    )
    head = ft.order(0)[: args.head]
    print(f"first {len(head)} training ids (epoch 0 order):")
    for r in head:
        print(f"  {ft.row_id(r)}")
    return 0
