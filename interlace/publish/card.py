"""The model card (README.md) of a pruned model: what was removed, how it was trained, what it costs.

Everything comes from the PruneJob spec, the LayerPlan and the Results; no value from the environment
is ever read here, so no credential can end up in the card (the tests grep it for planted secrets).
Secret NAMES from the spec are left out as well: they say nothing about the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from interlace.spec import LayerPlan, PruneJob, Results

PAPER = "https://arxiv.org/abs/2511.19676"


def _is_local(source: str) -> bool:
    return source.startswith(("/", ".", "~", "file:", "builtin:")) or Path(source).exists()


def _fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}{unit}"


def _layers(xs: list[int]) -> str:
    return ", ".join(map(str, xs)) if xs else "none"


def model_card(
    *, job: PruneJob | None, plan: LayerPlan | None, results: Results | None, model_config: dict[str, Any] | None = None
) -> str:
    """Markdown with a YAML header that the Hugging Face Hub understands."""
    spec = job.spec if job is not None else None
    source = spec.model.source if spec else "unknown"
    multimodal = bool(model_config and ("vision_config" in model_config or "text_config" in model_config))
    header = ["---", "library_name: transformers"]
    if spec and not _is_local(source):
        header.append(f"base_model: {source}")
    header += [
        f"pipeline_tag: {'image-text-to-text' if multimodal else 'text-generation'}",
        "tags:",
        "- interlace",
        "- layer-pruning",
        "- pruned",
        "---",
        "",
    ]
    title = job.metadata.name if job is not None else "pruned model"
    lines = [f"# {title}", ""]
    lines.append(
        f"`{source}` with decoder layers removed by INTERLACE layer pruning ([paper]({PAPER})): "
        "redundant layers are dropped in non-overlapping windows, the layer after each dropped one is "
        "finetuned and the rest stays frozen."
    )
    lines += ["", "## Pruning", ""]
    lines += ["| | |", "|---|---|", f"| Base model | `{source}` |"]
    if spec and spec.model.revision:
        lines.append(f"| Base revision | `{spec.model.revision}` |")
    if plan is not None:
        kept = plan.num_layers - len(plan.drop)
        ratio = plan.ratio if plan.ratio is not None else len(plan.drop) / plan.num_layers
        lines += [
            f"| Method | {plan.strategy} |",
            f"| Pruning ratio | {ratio:.1%} ({len(plan.drop)} of {plan.num_layers} layers; {kept} remain) |",
            f"| Dropped layers | {_layers(plan.drop)} |",
            f"| Finetuned layers | {_layers(plan.finetune)} |",
            f"| Anchor layers | {_layers(plan.anchor)} |",
        ]
        if plan.windows:
            lines.append(f"| Windows | {'; '.join(str(w) for w in plan.windows)} |")
    if spec is not None:
        lines.append(f"| DeepStack policy | {spec.pruning.deepstack_policy} |")
    lines.append("")
    lines.append("Layer indices are 0-based indices of the ORIGINAL model.")
    if spec is not None:
        ft = spec.finetune
        lines += ["", "## Finetuning", ""]
        if not ft.enabled:
            lines.append("No finetuning (surgery only).")
        else:
            d = ft.data
            subsets = ", ".join(d.subsets) if d.subsets else "all"
            lines += [
                "| | |",
                "|---|---|",
                f"| Data | `{d.path}` ({d.format}; subsets: {subsets}; fraction {d.fraction:g}, "
                f"{d.sampling} rows{'' if d.max_samples is None else f', at most {d.max_samples}'}) |",
                f"| Learning rate | {ft.learning_rate:g} ({ft.lr_scheduler}, warmup {ft.warmup_ratio:g}) |",
                f"| Effective batch | {ft.per_device_batch_size} x {ft.gradient_accumulation_steps} "
                f"x {spec.resources.workers} worker(s) |",
                f"| Epochs / max steps | {ft.epochs:g} / {ft.max_steps or '-'} |",
                f"| Max length | {ft.max_length} |",
                f"| Weight decay / grad clip | {ft.weight_decay:g} / {ft.max_grad_norm:g} |",
                f"| Precision | {ft.precision} |",
            ]
    if results is not None:
        lines += ["", "## Results", ""]
        lines += [
            f"Relative performance (mean of pruned/base over benchmarks): "
            f"**{_fmt(results.relative_performance, ' %', 1)}**  ",
            f"Time-to-first-token speedup: **{_fmt(results.prefill_speedup, 'x')}**, "
            f"decode speedup: **{_fmt(results.decode_speedup, 'x')}**",
        ]
        if results.params_before and results.params_after:
            lines.append(
                f"  \nParameters: {results.params_before:,} -> {results.params_after:,} "
                f"({1 - results.params_after / results.params_before:.1%} fewer)"
            )
        if results.benchmarks:
            lines += ["", "| Benchmark | Metric | Base | Pruned | Relative |", "|---|---|---|---|---|"]
            for b in results.benchmarks:
                lines.append(
                    f"| {b.name} | {b.metric} | {b.base:.4g} | {b.pruned:.4g} | {_fmt(b.relative, ' %', 1)} |"
                )
            lines += ["", "Perplexity: relative = base / pruned; other metrics: pruned / base."]
    if plan is not None:
        lines += ["", "## Plan", "", "```json", json.dumps(plan.to_wire(), indent=2), "```"]
    lines += [
        "",
        "## Usage",
        "",
        "The checkpoint loads with plain transformers (the pruned config has the new layer count):",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor" if multimodal
        else "from transformers import AutoModelForCausalLM, AutoTokenizer",
        f"model = {'AutoModelForImageTextToText' if multimodal else 'AutoModelForCausalLM'}.from_pretrained(\"<this repo or path>\")",
        "```",
        "",
        "Generated by interlace-operator.",
        "",
    ]
    return "\n".join(header + lines)


def write_card(model_dir: Path, **kwargs: Any) -> Path:
    """Write README.md into model_dir atomically and return its path."""
    cfg_path = model_dir / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
    text = model_card(model_config=config, **kwargs)
    out = model_dir / "README.md"
    tmp = out.with_name("README.md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
