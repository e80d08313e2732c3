"""A ratio sweep: ONE analysis of the base model, then one pruned variant per ratio.

    interlace sweep -f prunejob.yaml --ratios 0.1,0.15,0.2,0.25      (or interlace.sweep(job, ratios))

The layer scores do not depend on the ratio, so they are computed once (``<output>/scores.json``)
and every ratio gets its plan from them. Each variant then runs the rest of the pipeline
(surgery -> finetune -> evaluate -> publish) in its own directory ``<output>/ratio-<r>/``, published
under its own output (``<uri>/ratio-<r>``; for the Hub ``<repo>-ratio-<r>``). A variant directory
holds its plan.json, a link to the shared scores.json (so the pipeline reuses the plan instead of
analysing again), and the usual artifacts. ``<output>/sweep.json`` holds the table of variants
(ratio, layers, parameters, retention, speedups, output).

What this piece does not do yet (see issue 14): the PruneJob field spec.pruning.ratios (so the
operator and the CRD know sweeps), finetuning the variants concurrently on one Ray cluster (they
run one after another here), and a status table of variants. Each variant reloads the base model
for its surgery and evaluation (the base scores are recomputed per variant).
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from interlace.errors import InterlaceError
from interlace.progress import Reporter
from interlace.spec import Phase, PruneJob, Results


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
        return self.output_dir / "scores.json"

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


def run_sweep(
    job: PruneJob,
    ratios: Sequence[float],
    *,
    output_dir: str | Path,
    reporter: Reporter,
    use_gpu: bool | None = None,
) -> SweepResult:
    """One analysis, then every ratio's variant through interlace.pipeline.run_pipeline."""
    import torch

    from interlace.models import load_model
    from interlace.pipeline import _analyze, _write_json, check_inputs, run_pipeline
    from interlace.selection import n_drop_for_ratio, protected_layers, select_layers

    ratios = check_ratios(ratios)
    spec = job.spec
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if use_gpu is None:
        use_gpu = torch.cuda.is_available() and spec.resources.gpus_per_worker > 0
    check_inputs(spec)

    # ---- the one analysis
    reporter.stage(Phase.ANALYZING, f"loading {spec.model.source} (one analysis for {len(ratios)} ratios)")
    base = load_model(
        spec.model.source,
        dtype=spec.model.dtype,
        device="cuda" if use_gpu else "cpu",
        attn_implementation=spec.model.attn_implementation,
        revision=spec.model.revision,
        trust_remote_code=spec.model.trust_remote_code,
    )
    num_layers = base.parts.num_layers
    n_drops = []
    for i, r in enumerate(ratios):
        try:
            n_drops.append(n_drop_for_ratio(num_layers, r))
        except InterlaceError as err:
            raise InterlaceError(f"ratios[{i}]: {err}") from None
    protected = protected_layers(spec.pruning, base.parts, num_layers=num_layers)
    params_before = sum(p.numel() for p in base.model.parameters())
    scores = _analyze(spec, base, reporter)
    scores.save(out / "scores.json")
    del base
    gc.collect()

    # ---- one plan per ratio, from the same scores
    reporter.stage(
        Phase.PLANNING, ", ".join(f"{r:g}: drop {n}" for r, n in zip(ratios, n_drops, strict=True))
    )
    plans = []
    for r, n in zip(ratios, n_drops, strict=True):
        vdir = out / variant_name(r)
        vdir.mkdir(parents=True, exist_ok=True)
        plan = select_layers(
            scores,
            n_drop=n,
            strategy=str(spec.pruning.strategy),
            protected=protected,
            seed=spec.pruning.seed,
            ratio=r,
        )
        _write_json(vdir / "plan.json", plan.to_wire())
        link = vdir / "scores.json"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path("..") / "scores.json")  # the shared analysis: run_pipeline reuses the plan
        plans.append(plan)

    # ---- the variants, one after another
    result = SweepResult(output_dir=out, num_layers=num_layers, params_before=params_before)
    for r, plan in zip(ratios, plans, strict=True):
        vjob = job.model_copy(deep=True)
        vjob.spec.pruning = vjob.spec.pruning.model_copy(update={"ratio": r, "num_layers": None})
        vjob.spec.finetune.resume = True  # what makes run_pipeline take plan.json instead of analysing
        vjob.spec.output.uri = variant_uri(spec.output.uri, r)
        if vjob.spec.output.hub is not None:
            vjob.spec.output.hub.repo = f"{vjob.spec.output.hub.repo}-{variant_name(r)}"
        vdir = out / variant_name(r)
        res = run_pipeline(vjob, output_dir=vdir, reporter=reporter, use_gpu=use_gpu)
        used = json.loads((vdir / "plan.json").read_text())
        if used["drop"] != plan.drop:  # pragma: no cover - run_pipeline must have reused the plan
            raise RuntimeError(f"variant {r:g} did not reuse the sweep's plan")
        result.variants.append(
            Variant(
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
        )
        _write_json(out / "sweep.json", result.to_dict())  # the table so far, after every variant
    return result
