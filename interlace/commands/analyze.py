"""`interlace analyze`: pack-1/2/3 layer similarity scores of a model on calibration data.

    interlace analyze --model DIR --data PATH --samples N --batch-size B --output scores.json
                      [--heatmap scores.png] [--max-length 2048] [--format finevision|text]

Writes `{"num_layers": L, "scores": {"1": [...], "2": [...], "3": [...]}, "meta": {...}}` (atomically).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from interlace.errors import InterlaceError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "analyze",
        help="layer similarity scores (pack-1/2/3 cosine) on calibration data",
        description="Run the model on calibration samples (first user turn, chat template) and write the "
        "pack-k cosine similarity of every window of k consecutive decoder layers.",
    )
    p.add_argument("--model", required=True, help="model directory, hub id or builtin:<name>")
    p.add_argument(
        "--data", required=True, help="calibration data: directory/glob of shards, hub id or builtin:english"
    )
    p.add_argument(
        "--format",
        choices=("finevision", "text"),
        default="finevision",
        help="row schema of --data (default finevision)",
    )
    p.add_argument("--samples", type=int, default=256, help="number of calibration samples (default 256)")
    p.add_argument("--batch-size", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--max-length", type=int, default=2048, help="max tokens per sample (default 2048)")
    p.add_argument("--max-window", type=int, default=3, help="largest window size k (default 3)")
    p.add_argument("--output", required=True, type=Path, help="scores JSON to write")
    p.add_argument("--heatmap", type=Path, help="also write a heatmap PNG here")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    return p


def run(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise InterlaceError(f"--samples {args.samples}: need at least 1")
    if args.batch_size < 1:
        raise InterlaceError(f"--batch-size {args.batch_size}: need at least 1")
    if args.max_length < 16:
        raise InterlaceError(f"--max-length {args.max_length}: need at least 16")
    if args.max_window < 1:
        raise InterlaceError(f"--max-window {args.max_window}: need at least 1")
    for opt, path in (("--output", args.output), ("--heatmap", args.heatmap)):
        if path is not None and path.is_dir():
            raise InterlaceError(f"{opt} {path} is a directory; give a file path")

    from interlace.data import check_source, load_samples
    from interlace.spec import DataSpec

    # All rows are eligible; the first --samples usable ones (after the loader's filters) are analysed.
    spec = DataSpec(format=args.format, path=args.data, fraction=1.0)
    check_source(spec, where="--data")

    from interlace.analysis import analyze
    from interlace.calibration import CalibrationStats, calibration_batches
    from interlace.models import load_model

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.max_window > loaded.parts.num_layers - 1:
        raise InterlaceError(
            f"--max-window {args.max_window}: the model has {loaded.parts.num_layers} layers, use at most "
            f"{loaded.parts.num_layers - 1}"
        )
    samples = list(load_samples(spec, limit=args.samples))
    if not samples:
        raise InterlaceError(f"--data {args.data}: no usable samples")
    stats = CalibrationStats()
    batches = calibration_batches(
        samples, loaded.processor, batch_size=args.batch_size, max_length=args.max_length, stats=stats
    )
    scores = analyze(loaded.model, batches, max_window=args.max_window, total_samples=len(samples))
    scores.meta.update({"model": args.model, "data": args.data, "skipped_too_long": stats.skipped_too_long})
    scores.save(args.output)
    if args.heatmap is not None:
        from interlace.plots import heatmap

        heatmap(scores, args.heatmap, title=f"{args.model}: layer similarity")
    print(
        f"analyzed {scores.meta['num_samples']} samples ({scores.meta['num_tokens']} tokens) of "
        f"{scores.num_layers} layers -> {args.output}",
        file=sys.stderr,
    )
    return 0
