"""The model card (README.md) of a pruned model: what was removed, how it was trained, what it costs.

Everything comes from the PruneJob spec, the LayerPlan and the Results; no value from the environment
is ever read here, so no credential can end up in the card (the tests grep it for planted secrets).
Secret NAMES from the spec are left out as well: they say nothing about the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interlace.artifacts import atomic_write_text
from interlace.schema.spec import LayerPlan, PruneJob, PruneJobSpec, Results
from interlace.settings import settings

PAPER = "https://arxiv.org/abs/2511.19676"
TAGS = ["interlace", "layer-pruning", "pruned"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# The builtin model: what it is on the Hub, and its licence (see interlace.builtin).
BUILTIN_BASES = {"builtin:smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}


@dataclass
class BaseInfo:
    """What the card says about the base model: its Hub id and licence (the derivative's licence)."""

    base_model: str | None = None
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None


def _card_meta(card_path: Path) -> dict[str, Any]:
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(card_path).data.to_dict()
    except Exception:
        return {}


def base_info(spec: PruneJobSpec) -> BaseInfo:
    """base_model and licence of spec.model.source: the builtin table; a local checkpoint's own card
    (README.md) or builtin marker; a hub model's card from the local hub cache, else from the Hub
    (skipped offline). Unknown stays None: the card then says "see the base model"."""
    source = spec.model.source.strip()
    if source in BUILTIN_BASES:
        repo, lic = BUILTIN_BASES[source]
        return BaseInfo(base_model=repo, license=lic)
    meta: dict[str, Any] = {}
    info = BaseInfo()
    local = Path(source.removeprefix("file://")).expanduser()
    if _is_local(source):
        marker = local / "interlace-builtin.json"
        if marker.is_file():
            try:
                built = json.loads(marker.read_text()).get("source")
            except (OSError, ValueError):
                built = None
            if built in BUILTIN_BASES:
                repo, lic = BUILTIN_BASES[built]
                return BaseInfo(base_model=repo, license=lic)
        if (local / "README.md").is_file():
            meta = _card_meta(local / "README.md")
            base = meta.get("base_model")
            info.base_model = base if isinstance(base, str) else None
    elif _HUB_ID.match(source):
        info.base_model = source
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "README.md", revision=spec.model.revision)
        if isinstance(cached, str):
            meta = _card_meta(Path(cached))
        elif not settings().offline:
            from huggingface_hub import ModelCard

            try:
                meta = ModelCard.load(source).data.to_dict()
            except Exception:
                meta = {}
    card_license = meta.get("license")
    info.license = card_license if isinstance(card_license, str) else None
    for key in ("license_name", "license_link"):
        if isinstance(meta.get(key), str):
            setattr(info, key, meta[key])
    return info


def _dataset_ids(spec: PruneJobSpec) -> list[str]:
    """Hub datasets the model was calibrated, finetuned or evaluated on (local and builtin data are not)."""
    out: list[str] = []
    candidates = [spec.calibration.data or spec.finetune.data]
    if spec.finetune.enabled:
        candidates.append(spec.finetune.data)
    if spec.evaluation.data is not None:
        candidates.append(spec.evaluation.data)
    if spec.evaluation.out_of_domain_data is not None:
        candidates.append(spec.evaluation.out_of_domain_data)
    for d in candidates:
        path = d.path.strip()
        if _HUB_ID.match(path) and not Path(path).exists() and path not in out:
            out.append(path)
    return out


def _eval_results(spec: PruneJobSpec | None, results: Results, multimodal: bool) -> list[Any]:
    """model-index entries: per benchmark the pruned model's score and its score relative to the base."""
    from huggingface_hub import EvalResult

    out = []
    for b in results.benchmarks:
        if b.name.endswith("before finetuning"):
            continue  # an intermediate model, not this one
        if b.metric == "perplexity":
            data = None
            if spec is not None:
                data = (
                    spec.evaluation.out_of_domain_data
                    if b.domain == "out"
                    else spec.evaluation.data or spec.finetune.data
                )
            dataset = data.path if data is not None else b.name
            task = "text-generation"
        else:
            dataset = b.name[len("vqa:") :] if b.name.startswith("vqa:") else b.name
            task = "image-text-to-text" if multimodal else "text-generation"
        common: dict[str, Any] = {
            "task_type": task,
            "dataset_type": dataset,
            "dataset_name": b.name,
        }
        out.append(
            EvalResult(
                **common, metric_type=b.metric, metric_name=f"{b.metric} (pruned)", metric_value=b.pruned
            )
        )
        if b.relative is not None:
            out.append(
                EvalResult(
                    **common,
                    metric_type="relative_performance",
                    metric_name="relative to the base model (%)",
                    metric_value=round(b.relative, 2),
                )
            )
    return out


def card_data(
    *, job: PruneJob | None, results: Results | None, base: BaseInfo, title: str, multimodal: bool
) -> Any:
    """The card's metadata as huggingface_hub's ModelCardData."""
    from huggingface_hub import ModelCardData

    spec = job.spec if job is not None else None
    evals = _eval_results(spec, results, multimodal) if results is not None else []
    return ModelCardData(
        library_name="transformers",
        license=base.license,
        license_name=base.license_name,
        license_link=base.license_link,
        base_model=base.base_model,
        datasets=(_dataset_ids(spec) or None) if spec is not None else None,
        pipeline_tag="image-text-to-text" if multimodal else "text-generation",
        tags=list(TAGS),
        model_name=title if evals else None,
        eval_results=evals or None,
    )


def _is_local(source: str) -> bool:
    return source.startswith(("/", ".", "~", "file:", "builtin:")) or Path(source).exists()


def _fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}{unit}"


def _layers(xs: list[int]) -> str:
    return ", ".join(map(str, xs)) if xs else "none"


def model_card(
    *,
    job: PruneJob | None,
    plan: LayerPlan | None,
    results: Results | None,
    model_config: dict[str, Any] | None = None,
    base: BaseInfo | None = None,
) -> str:
    """Markdown with the YAML metadata the Hugging Face Hub reads (huggingface_hub's ModelCardData:
    license, base_model, datasets, tags, pipeline_tag and a model-index of the measured results)."""
    spec = job.spec if job is not None else None
    source = spec.model.source if spec else "unknown"
    multimodal = bool(model_config and ("vision_config" in model_config or "text_config" in model_config))
    base = base if base is not None else (base_info(spec) if spec is not None else BaseInfo())
    title = job.metadata.name if job is not None else "pruned model"
    data = card_data(job=job, results=results, base=base, title=title, multimodal=multimodal)
    header = ["---", data.to_yaml().rstrip("\n"), "---", ""]
    lines = [f"# {title}", ""]
    lines.append(
        f"`{source}` with decoder layers removed by INTERLACE layer pruning ([paper]({PAPER})): in each "
        "chosen window of three consecutive layers (the most redundant by hidden-state similarity, the "
        "windows never overlapping), the more redundant of the first two layers is dropped, the other one "
        "is finetuned, and the third stays frozen as an anchor; every other layer stays frozen."
    )
    lines += ["", "## Pruning", ""]
    lines += ["| | |", "|---|---|", f"| Base model | `{source}` |"]
    if base.base_model and base.base_model != source:
        lines.append(
            f"| Base model on the Hub | [{base.base_model}](https://huggingface.co/{base.base_model}) |"
        )
    licence = f"{base.license} (the base model's)" if base.license else "see the base model"
    lines.append(f"| License | {licence} |")
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
        hidden = _hidden_size(model_config)
        if hidden is not None:
            lines.append(f"| Architecture | hidden size {hidden}, {kept} decoder layers |")
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
                f"| Effective batch | {_effective_batch(spec)} |",
                f"| Epochs / max steps | {ft.epochs:g} / {ft.max_steps or '-'} |",
                f"| Max length | {ft.max_length} |",
                f"| Weight decay / grad clip | {ft.weight_decay:g} / {ft.max_grad_norm:g} |",
                f"| Precision | {ft.precision} |",
            ]
    if results is not None:
        lines += ["", "## Results", ""]
        retention = results.retention_line()
        if retention is not None:  # out of domain (the headline) and in domain, each labelled
            lines.append(f"Perplexity {retention} (base/pruned).  ")
        lines += [
            f"Relative performance (mean of pruned/base over benchmarks"
            f"{', the in-domain perplexity left out' if results.retention_out_of_domain is not None else ''}): "
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
        *usage_snippet(_location(spec), multimodal=multimodal),
        "```",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
        "Generated by interlace-operator.",
        "",
    ]
    return "\n".join(header + lines)


CITATION = """@article{madinei2025interlace,
  title         = {{INTERLACE}: Interleaved Layer Pruning and Efficient Adaptation in Large Vision-Language Models},
  author        = {Madinei, Parsa and Solgi, Ryan and Wen, Ziqi and Skaza, Jonathan and Eckstein, Miguel and Pedarsani, Ramtin},
  year          = {2025},
  eprint        = {2511.19676},
  archivePrefix = {arXiv},
  primaryClass  = {cs.CV},
}"""
# The line of the usage snippet that names the model (a test points it at a local copy and runs the rest).
MODEL_LINE = "MODEL = "


def _location(spec: PruneJobSpec | None) -> str:
    """Where a reader finds this checkpoint: its Hub repo when published there, else a placeholder
    for the local copy of the output's model/ directory."""
    if spec is not None and spec.output.hub is not None:
        return spec.output.hub.repo
    if spec is not None and spec.output.uri.startswith("hf://"):
        return spec.output.uri.removeprefix("hf://")
    return "path/to/model"  # the model/ directory of the output, copied where the reader runs


def usage_snippet(location: str, *, multimodal: bool) -> list[str]:
    """A snippet that loads the checkpoint with transformers' Auto classes and generates an answer
    (tests/publish runs it against a published tiny model)."""
    if multimodal:
        return [
            "from PIL import Image",
            "from transformers import AutoModelForImageTextToText, AutoProcessor",
            "",
            f'{MODEL_LINE}"{location}"',
            "processor = AutoProcessor.from_pretrained(MODEL)",
            "model = AutoModelForImageTextToText.from_pretrained(MODEL)",
            'image = Image.new("RGB", (224, 224), "red")  # your image',
            'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is this?"}]}]',
            "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
            'inputs = processor(text=[prompt], images=[image], return_tensors="pt")',
            "out = model.generate(**inputs, max_new_tokens=32)",
            'print(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])',
        ]
    return [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'{MODEL_LINE}"{location}"',
        "tokenizer = AutoTokenizer.from_pretrained(MODEL)",
        "model = AutoModelForCausalLM.from_pretrained(MODEL)",
        'messages = [{"role": "user", "content": "What does layer pruning remove?"}]',
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
        "out = model.generate(**inputs, max_new_tokens=32)",
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
    ]


def _effective_batch(spec: PruneJobSpec) -> str:
    """Sequences per optimizer step: per device x accumulation x training processes (one per GPU,
    or one per CPU worker)."""
    ft, res = spec.finetune, spec.resources
    procs = res.workers * res.gpus_per_worker if res.gpus_per_worker > 0 else res.workers
    per_proc = ft.per_device_batch_size * ft.gradient_accumulation_steps
    where = (f"{res.workers} worker(s) x {res.gpus_per_worker} GPU(s)" if res.gpus_per_worker > 0
             else f"{res.workers} CPU worker(s)")
    return (f"{ft.per_device_batch_size} x {ft.gradient_accumulation_steps} x {procs} process(es) ({where}) "
            f"= {per_proc * procs} sequences per step")


def _hidden_size(config: dict[str, Any] | None) -> int | None:
    if not config:
        return None
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else config
    value = text.get("hidden_size")
    return value if isinstance(value, int) else None


def write_card(model_dir: Path, **kwargs: Any) -> Path:
    """Write README.md into model_dir atomically and return its path."""
    cfg_path = model_dir / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else None
    text = model_card(model_config=config, **kwargs)
    out = model_dir / "README.md"
    return atomic_write_text(out, text)
