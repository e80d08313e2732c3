"""`interlace publish`: write the model card and copy/upload a saved model.

    interlace publish --model DIR --to URI [--hub-repo ORG/NAME [--public]] \\
        [--job prunejob.yaml] [--plan plan.json] [--results results.json] [--artifacts DIR]

URI: a path, file://, pvc://<claim>/<path> (mounted), s3://<bucket>/<prefix> (credentials from
AWS_* env), or hf://<org>/<name>. --hub-repo uploads to the Hub as well (token: INTERLACE_HUB_TOKEN,
else huggingface_hub's lookup: HF_TOKEN, HF_TOKEN_PATH, the `hf auth login` cache; private unless
--public). Prints the model's URI.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from interlace.errors import InterlaceError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "publish",
        help="write the model card and publish a saved model (path, PVC, S3, HF Hub)",
        description="Write README.md (model card) into the model directory and publish it. Uploads are "
        "resumable (files already there with the same size and hash are skipped) and retried.",
    )
    p.add_argument("--model", required=True, type=Path, help="saved model directory (config.json, safetensors)")
    p.add_argument("--to", required=True, help="destination URI (path, file://, pvc://, s3://, hf://)")
    p.add_argument("--hub-repo", help="also upload to this Hugging Face Hub repo (<org>/<name>)")
    p.add_argument("--public", action="store_true", help="make a new Hub repo public (default: private)")
    p.add_argument("--job", type=Path, help="the PruneJob YAML (for the card: base model, data, hyperparameters)")
    p.add_argument("--plan", type=Path, help="plan.json (for the card: dropped/finetuned/anchor layers)")
    p.add_argument("--results", type=Path, help="results.json (for the card: relative performance, speedup)")
    p.add_argument("--artifacts", type=Path, help="run directory whose scores.json/plan.json/heatmap.png go along (S3)")
    return p


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise InterlaceError(f"--{what} {path}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InterlaceError(f"--{what} {path}: not valid JSON ({err.msg})") from None


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from interlace.schema.spec import (
        HubOutput,
        LayerPlan,
        OutputSpec,
        Results,
        format_validation_error,
        load_prunejob,
    )
    from interlace.stages.publish import publish

    job = load_prunejob(args.job) if args.job else None
    try:
        plan = LayerPlan.model_validate(_read_json(args.plan, "plan")) if args.plan else None
        results = Results.model_validate(_read_json(args.results, "results")) if args.results else None
        hub = HubOutput(repo=args.hub_repo, private=not args.public) if args.hub_repo else None
        spec = OutputSpec(uri=args.to, hub=hub)
    except ValidationError as err:
        raise InterlaceError(format_validation_error(err)) from None
    if plan is None and job is not None and job.status is not None:
        plan = job.status.plan
    uri = publish(args.model, spec, plan=plan, results=results, job=job, artifacts_dir=args.artifacts)
    print(uri)
    return 0
