"""The Python API: the pipeline and its stages as functions, with the CLI's checks and errors.

    import interlace

    result = interlace.prune("builtin:smollm2-135m", ratio=0.2, data="builtin:english",
                             output="./out", max_steps=20)          # the whole pipeline
    result.results.relative_performance, result.plan.drop, result.model_uri

    result = interlace.run("prunejob.yaml")                        # a PruneJob: object, dict or path
    report = interlace.validate("prunejob.yaml")                   # `interlace validate`, no Ray/torch

    from interlace import analyze, plan, prune, finetune, evaluate  # the stages one by one
    scores = analyze("path/to/model", "path/to/shards", samples=64)
    p = plan(scores, ratio=0.25)
    pruned = prune("path/to/model", plan=p, output="./pruned")
    tuned = finetune(pruned.model_dir, p, data="path/to/shards", output="./ft", max_steps=100)
    results = evaluate("path/to/model", tuned.model_dir, data="path/to/heldout")

The CLI subcommands analyze, plan, prune and evaluate are thin wrappers around these functions, so
a bad argument raises the same `InterlaceError` (a `ValueError`) with the same message; messages name
the keyword argument here (``samples=0``) and the option on the command line (``--samples 0``).
`interlace.run` raises `interlace.schema.spec.SpecError` (an InterlaceError) naming every bad field.

Importing this module is cheap: torch, transformers and ray are imported inside the functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interlace.artifacts import atomic_write_json
from interlace.errors import InterlaceError

if TYPE_CHECKING:  # pragma: no cover
    from interlace.models.load import LoadedModel
    from interlace.pipeline.sweep import SweepResult
    from interlace.pipeline.validate import ValidationReport
    from interlace.runtime.progress import Reporter
    from interlace.schema.spec import LayerPlan, ModelSpec, PruneJob, Results
    from interlace.stages.analyze.scores import LayerScores
    from interlace.stages.finetune.driver import FinetuneResult

# Files a processor or tokenizer is saved as (any of them means the checkpoint has one).
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "chat_template.jinja",
    "video_preprocessor_config.json",
)

# API keyword -> the option of the same meaning on the command line (where the name differs).
_CLI_NAMES = {"num_layers": "num-drop", "data_format": "format"}


def _arg(name: str, value: Any, cli: bool) -> str:
    """How an argument is named in a message: `--batch-size 0` (CLI) or `batch_size=0` (API)."""
    if cli:
        return f"--{_CLI_NAMES.get(name, name).replace('_', '-')} {value}"
    return f"{name}={value!r}"


def _need(name: str, value: int, minimum: int, cli: bool) -> None:
    if value < minimum:
        raise InterlaceError(f"{_arg(name, value, cli)}: need at least {minimum}")


def _not_a_dir(name: str, path: Path | None, cli: bool) -> None:
    if path is not None and path.is_dir():
        raise InterlaceError(f"{_arg(name, path, cli)} is a directory; give a file path")


# ---------------------------------------------------------------------------------------- results


@dataclass
class PruneResult:
    """What `prune` or `run` produced.

    * ``model_dir``: the local directory of the pruned (and finetuned, when it ran) checkpoint;
    * ``model_uri``: where the model was published (a path, s3:// or the Hub URL), for a pipeline run;
    * ``plan``: the layers dropped / finetuned / kept as anchors;
    * ``results``: layers, parameters, benchmarks, relative performance, speedups (pipeline runs);
    * ``output_dir``: the run's artifacts (scores.json, plan.json, heatmap.png, results.json, ...);
    * ``processor_saved``: False when the input had no processor/tokenizer files (surgery only).
    """

    plan: LayerPlan
    model_dir: Path | None = None
    model_uri: str | None = None
    results: Results | None = None
    output_dir: Path | None = None
    processor_saved: bool = True
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what `--json` prints)."""
        out: dict[str, Any] = {
            "modelDir": str(self.model_dir) if self.model_dir else None,
            "modelUri": self.model_uri,
            "outputDir": str(self.output_dir) if self.output_dir else None,
            "plan": self.plan.to_wire(),
            "processorSaved": self.processor_saved,
        }
        if self.results is not None:
            out["results"] = self.results.to_wire()
        if self.notes:
            out["notes"] = list(self.notes)
        return out


# ------------------------------------------------------------------------------------- validation


def validate(job: PruneJob | dict[str, Any] | str | Path, *, cluster: bool = False) -> ValidationReport:
    """`interlace validate`: schema and offline checks; never raises for a bad spec (see `.ok`,
    `.errors`; `.raise_for_errors()` raises SpecError naming every field)."""
    from interlace.pipeline.validate import validate as _validate

    return _validate(job, cluster=cluster)


def load_job(job: PruneJob | dict[str, Any] | str | Path) -> PruneJob:
    """A PruneJob from an object, a dict (as YAML would give) or a YAML path; SpecError naming fields."""
    from interlace.schema.spec import PruneJob, load_prunejob, parse_prunejob

    if isinstance(job, PruneJob):
        return job.model_copy(deep=True)
    if isinstance(job, str | Path):
        return load_prunejob(job)
    return parse_prunejob(job)


# ---------------------------------------------------------------------------------------- stages


def _data_spec(
    data: Any, *, data_format: str | None, fraction: float = 1.0, max_samples: int | None = None
) -> Any:
    from pydantic import ValidationError

    from interlace.schema.spec import DataSpec, format_validation_error

    if isinstance(data, DataSpec):
        return data
    if isinstance(data, dict):
        try:
            return DataSpec.model_validate(data)
        except ValidationError as err:
            raise InterlaceError(format_validation_error(err, prefix="data.").replace("\n", "; ")) from None
    fmt = data_format or "finevision"
    return DataSpec.model_validate(
        {"format": fmt, "path": str(data), "fraction": fraction, "max_samples": max_samples}
    )


def _load(model: Any, **kw: Any) -> LoadedModel:
    from interlace.models.load import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        return model
    return load_model(str(model), **kw)


def analyze(
    model: str | Path | LoadedModel,
    data: str | Path | dict[str, Any] | Any,
    *,
    samples: int = 256,
    batch_size: int = 4,
    max_length: int = 2048,
    max_window: int = 3,
    data_format: str = "finevision",
    output: str | Path | None = None,
    heatmap: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    _cli: bool = False,
) -> LayerScores:
    """Layer similarity scores (pack-1..max_window cosine) of `model` on calibration `data`.

    `data` is a directory/glob of shards, a hub id, `builtin:english`, a DataSpec or its dict.
    Writes scores JSON to `output` and a heatmap PNG to `heatmap` when given.
    """
    _need("samples", samples, 1, _cli)
    _need("batch_size", batch_size, 1, _cli)
    _need("max_length", max_length, 16, _cli)
    _need("max_window", max_window, 1, _cli)
    out = Path(output) if output is not None else None
    heat = Path(heatmap) if heatmap is not None else None
    _not_a_dir("output", out, _cli)
    _not_a_dir("heatmap", heat, _cli)

    from interlace.data import check_source, load_samples

    # All rows are eligible; the first `samples` usable ones (after the loader's filters) are analysed.
    spec = _data_spec(data, data_format=data_format)
    where = "--data" if _cli else "data"
    check_source(spec, where=where)

    from interlace.stages.analyze.calibration import CalibrationStats, calibration_batches
    from interlace.stages.analyze.similarity import analyze as _analyze

    loaded = _load(model, dtype=dtype, device=device)
    n = loaded.parts.num_layers
    if max_window > n - 1:
        raise InterlaceError(
            f"{_arg('max_window', max_window, _cli)}: the model has {n} layers, use at most {n - 1}"
        )
    rows = list(load_samples(spec, limit=samples))
    if not rows:
        raise InterlaceError(f"{_arg('data', spec.path, _cli)}: no usable samples")
    stats = CalibrationStats()
    batches = calibration_batches(
        rows, loaded.processor, batch_size=batch_size, max_length=max_length, stats=stats
    )
    scores = _analyze(loaded.model, batches, max_window=max_window, total_samples=len(rows))
    scores.meta.update(
        {"model": loaded.source or str(model), "data": spec.path, "skipped_too_long": stats.skipped_too_long}
    )
    if out is not None:
        scores.save(out)
    if heat is not None:
        from interlace.stages.analyze.heatmap import heatmap as draw

        draw(scores, heat, title=f"{loaded.source or model}: layer similarity")
    return scores


def plan(
    scores: LayerScores | str | Path,
    *,
    ratio: float | None = None,
    num_layers: int | None = None,
    strategy: str = "interlace",
    protect: Iterable[int] = (),
    deepstack_policy: str = "protect",
    seed: int = 0,
    output: str | Path | None = None,
    _cli: bool = False,
) -> LayerPlan:
    """Choose the layers to drop (and the interleaved finetune/anchor layers) from analysis scores.

    Exactly one of `ratio` (n = floor(L * ratio)) and `num_layers` (layers to drop). With
    `deepstack_policy="protect"`, the Qwen3-VL DeepStack receivers recorded in the scores are kept.
    """
    from interlace.schema.limits import max_drop
    from interlace.schema.spec import PLANNING_STRATEGIES
    from interlace.stages.analyze.scores import LayerScores
    from interlace.stages.plan import n_drop_for_ratio, save_plan, select_layers

    out = Path(output) if output is not None else None
    _not_a_dir("output", out, _cli)
    if (ratio is None) == (num_layers is None):
        raise InterlaceError("give exactly one of ratio and num_layers (--ratio / --num-drop)")
    if seed < 0:
        raise InterlaceError(f"{_arg('seed', seed, _cli)}: must be >= 0")
    if str(strategy) not in {s.value for s in PLANNING_STRATEGIES}:
        raise InterlaceError(
            f"{_arg('strategy', strategy, _cli)}: unknown strategy; use one of "
            f"{', '.join(s.value for s in PLANNING_STRATEGIES)}"
        )
    if deepstack_policy not in ("protect", "position"):
        raise InterlaceError(f"{_arg('deepstack_policy', deepstack_policy, _cli)}: use protect or position")
    protected = sorted({int(i) for i in protect})
    neg = [i for i in protected if i < 0]
    if neg:
        raise InterlaceError(f"{'--protect' if _cli else 'protect'}: layer(s) {neg} are negative")
    sc = scores if isinstance(scores, LayerScores) else LayerScores.load(scores)
    L = sc.num_layers
    bad = [i for i in protected if i >= L]
    if bad:
        raise InterlaceError(f"{'--protect' if _cli else 'protect'}: layer(s) {bad} outside 0..{L - 1}")
    if deepstack_policy == "protect":
        protected = sorted(set(protected) | set(sc.meta.get("deepstack_layers") or []))
    if ratio is not None:
        n_drop = n_drop_for_ratio(L, ratio)
    else:
        assert num_layers is not None
        if num_layers < 1 or num_layers > max_drop(L):
            raise InterlaceError(
                f"{_arg('num_layers', num_layers, _cli)}: must be in 1..{max_drop(L)} for {L} layers"
            )
        n_drop = num_layers
    p = select_layers(sc, n_drop=n_drop, strategy=strategy, protected=protected, seed=seed, ratio=ratio)
    if out is not None:
        save_plan(p, out)
    return p


def _load_plan(p: LayerPlan | str | Path | dict[str, Any]) -> LayerPlan:
    from pydantic import ValidationError

    from interlace.schema.spec import LayerPlan, format_validation_error
    from interlace.stages.plan import load_plan

    if isinstance(p, LayerPlan):
        return p
    if isinstance(p, dict):
        try:
            return LayerPlan.model_validate(p)
        except ValidationError as err:
            raise InterlaceError(format_validation_error(err, "plan.").replace("\n", "; ")) from None
    return load_plan(p)


def prune(
    model: str | Path,
    *,
    plan: LayerPlan | str | Path | dict[str, Any] | None = None,
    output: str | Path | None = None,
    ratio: float | None = None,
    num_layers: int | None = None,
    data: str | Path | dict[str, Any] | None = None,
    strategy: str = "interlace",
    finetune: bool = True,
    max_steps: int | None = None,
    evaluate: bool = True,
    eval_data: str | Path | dict[str, Any] | None = None,
    workers: int = 1,
    gpus_per_worker: int | None = None,
    spec: dict[str, Any] | None = None,
    deepstack_policy: str = "protect",
    dtype: str = "checkpoint",
    overwrite: bool = False,
    quiet: bool = False,
    _cli: bool = False,
) -> PruneResult:
    """Prune `model` (a directory, hub id or builtin:<name>).

    * With ``ratio`` or ``num_layers``: the whole INTERLACE pipeline (analyze -> plan -> surgery ->
      finetune -> evaluate -> save) on ``data`` (calibration and finetuning; `eval_data` held out for
      perplexity), artifacts and model under ``output``, on ``workers`` Ray Train workers with
      ``gpus_per_worker`` GPUs each (default: 1 where this machine has CUDA, else 0). ``spec`` is a
      dict deep-merged into the PruneJob spec (camelCase, as in YAML) for everything else. This is
      `run` of the PruneJob it builds.
    * With ``plan`` (a LayerPlan, plan.json or its dict): surgery only, the pruned checkpoint saved to
      ``output`` (atomically; an existing non-empty directory needs ``overwrite``). A checkpoint
      without processor/tokenizer files is pruned and saved without them (``processor_saved`` False).
    """
    if plan is not None:
        if ratio is not None or num_layers is not None:
            raise InterlaceError(
                "give either plan (surgery only) or ratio/num_layers (the pipeline), not both"
            )
        if output is None:
            raise InterlaceError("output: the directory for the pruned checkpoint is required")
        return _surgery(
            model,
            plan_source=plan,
            output=Path(output),
            deepstack_policy=deepstack_policy,
            dtype=dtype,
            overwrite=overwrite,
            cli=_cli,
        )
    if ratio is None and num_layers is None:
        raise InterlaceError("give ratio or num_layers (the pipeline), or plan (surgery only)")
    if gpus_per_worker is None:
        import torch

        gpus_per_worker = 1 if torch.cuda.is_available() else 0
    doc = _job_doc(
        model,
        gpus_per_worker=gpus_per_worker,
        ratio=ratio,
        num_layers=num_layers,
        data=data,
        strategy=strategy,
        finetune=finetune,
        max_steps=max_steps,
        evaluate=evaluate,
        eval_data=eval_data,
        workers=workers,
        output=output,
        spec=spec,
    )
    result = run(doc, quiet=quiet)
    if not isinstance(result, PruneResult):  # a `spec` override asking for spec.pruning.ratios
        raise InterlaceError("spec.pruning.ratios: prune() makes one model; use interlace.sweep() for several")
    return result


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _data_doc(data: Any) -> dict[str, Any]:
    if isinstance(data, dict):
        return dict(data)
    if hasattr(data, "to_wire"):
        return data.to_wire()
    return {"path": str(data)}


def _job_doc(
    model: str | Path,
    *,
    ratio: float | None,
    num_layers: int | None,
    data: Any,
    strategy: str,
    finetune: bool,
    max_steps: int | None,
    evaluate: bool,
    eval_data: Any,
    workers: int,
    gpus_per_worker: int,
    output: str | Path | None,
    spec: dict[str, Any] | None,
) -> dict[str, Any]:
    pruning: dict[str, Any] = {"strategy": strategy}
    if ratio is not None:
        pruning["ratio"] = ratio
    if num_layers is not None:
        pruning["numLayers"] = num_layers
    s: dict[str, Any] = {
        "model": {"source": str(model)},
        "pruning": pruning,
        "finetune": {"enabled": bool(finetune)},
        "evaluation": {"enabled": bool(evaluate)},
        "resources": {"workers": workers, "gpusPerWorker": gpus_per_worker},
    }
    if data is not None:
        s["calibration"] = {"data": _data_doc(data)}
        s["finetune"]["data"] = _data_doc(data)
    if max_steps is not None:
        s["finetune"]["maxSteps"] = max_steps
    if eval_data is not None:
        s["evaluation"]["data"] = _data_doc(eval_data)
    if output is not None:
        s["output"] = {"uri": str(output)}
    if spec:
        s = _deep_merge(s, spec)
    return {
        "apiVersion": "interlace.dev/v1alpha1",
        "kind": "PruneJob",
        "metadata": {"name": "python"},
        "spec": s,
    }


def _surgery(
    model: Any,
    *,
    plan_source: Any,
    output: Path,
    deepstack_policy: str,
    dtype: str,
    overwrite: bool,
    cli: bool,
) -> PruneResult:
    out = output
    if out.exists() and not out.is_dir():
        raise InterlaceError(f"{_arg('output', out, cli)} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InterlaceError(
            f"{_arg('output', out, cli)} exists and is not empty; choose a new directory or pass "
            + ("--overwrite" if cli else "overwrite=True")
        )
    if deepstack_policy not in ("protect", "position"):
        raise InterlaceError(f"{_arg('deepstack_policy', deepstack_policy, cli)}: use protect or position")
    p = _load_plan(plan_source)  # validated before the model is loaded

    from interlace.models.load import load_model
    from interlace.stages.prune import prune_model, save_model

    loaded = load_model(str(model), dtype=dtype, device="cpu", processor_optional=True)
    n = loaded.parts.num_layers
    if p.num_layers != n:
        where = f"--plan {plan_source}" if cli else "plan"
        raise InterlaceError(
            f"{where} is for a {p.num_layers}-layer model but {model} has {n} decoder layers"
        )
    prune_model(loaded.model, p, deepstack_policy=deepstack_policy)
    save_model(loaded.model, loaded.processor, out, plan=p, overwrite=overwrite)
    result = PruneResult(
        plan=p, model_dir=out, model_uri=str(out), processor_saved=loaded.processor is not None
    )
    if loaded.processor is None:
        src = loaded.path
        found = sorted(f for f in PROCESSOR_FILES if src is not None and (src / f).is_file())
        why = (
            f"could not be loaded ({loaded.processor_error})"
            if found
            else "not found (no " + ", ".join(PROCESSOR_FILES[:4]) + ", ...)"
        )
        result.notes.append(
            f"processor/tokenizer of {model} {why}; not copied: the pruned model was saved without them "
            "(copy them from the base model before using it for inference)"
        )
    return result


def finetune(
    model: str | Path,
    plan: LayerPlan | str | Path | dict[str, Any],
    *,
    output: str | Path,
    data: str | Path | dict[str, Any] | None = None,
    max_steps: int | None = None,
    workers: int = 1,
    use_gpu: bool = False,
    gpus_per_worker: int = 1,
    spec: dict[str, Any] | Any | None = None,
    freeze_lm_head: bool = True,
    reporter: Reporter | None = None,
    local: bool = True,
    base: str | Path | dict[str, Any] | None = None,
) -> FinetuneResult:
    """Interleaved finetuning of the plan's finetune layers of a pruned checkpoint on Ray Train.

    `model` is the directory `prune(..., plan=...)` wrote; `spec` a FinetuneSpec or its dict
    (camelCase, as under spec.finetune in YAML), `data` a shortcut for spec.data. Starts a local Ray
    cluster when none is running (`local=False` joins the one RAY_ADDRESS names). The whole finetuned
    model lands in `<output>/finetuned` (`result.model_dir`). `base` is the unpruned model (its
    source, or a ModelSpec dict as under spec.model): the teacher when spec.distillation is set
    (required then), and its trustRemoteCode/attnImplementation apply to loading the pruned copy.
    """
    from pydantic import ValidationError

    from interlace.schema.spec import FinetuneSpec, format_validation_error

    if workers < 1:
        raise InterlaceError(f"workers={workers}: need at least 1 Ray Train worker")
    try:
        if isinstance(spec, FinetuneSpec):
            ft = spec.model_copy(deep=True)
        else:
            ft = FinetuneSpec.model_validate(spec or {})
        if data is not None:
            ft.data = _data_spec(data, data_format=None)
    except ValidationError as err:
        raise InterlaceError(format_validation_error(err, prefix="finetune.").replace("\n", "; ")) from None
    p = _load_plan(plan)
    base_spec = _base_model_spec(base)
    from interlace.data import check_source

    check_source(ft.data, where="data")
    from interlace.runtime.placement import placement_of
    from interlace.runtime.ray_cluster import start_ray
    from interlace.stages.finetune.driver import finetune as _finetune

    start_ray(local=local)
    return _finetune(
        Path(model),
        p,
        ft,
        output_dir=Path(output),
        model=base_spec,
        placement=placement_of(workers, gpus_per_worker if use_gpu else 0),
        freeze_lm_head=freeze_lm_head,
        reporter=reporter,
        max_steps=max_steps,
    )


def _base_model_spec(base: str | Path | dict[str, Any] | None) -> ModelSpec | None:
    from pydantic import ValidationError

    from interlace.schema.spec import ModelSpec, format_validation_error

    if base is None:
        return None
    try:
        return ModelSpec.model_validate(base if isinstance(base, dict) else {"source": str(base)})
    except ValidationError as err:
        raise InterlaceError(format_validation_error(err, prefix="base.").replace("\n", "; ")) from None


def evaluate(
    base: str | Path | LoadedModel,
    pruned: str | Path | LoadedModel,
    *,
    benchmarks: Sequence[str] = ("perplexity",),
    data: str | Path | dict[str, Any] | None = None,
    data_format: str | None = None,
    max_samples: int = 128,
    batch_size: int = 4,
    max_new_tokens: int = 16,
    max_length: int = 2048,
    speed: bool = True,
    device: str = "cpu",
    output: str | Path | None = None,
    _cli: bool = False,
) -> Results:
    """Score `pruned` against `base` on the same samples: perplexity (needs `data`, held-out
    conversations) and/or local VQA sets; relative performance and, with `speed`, the speedups."""
    from pydantic import ValidationError

    from interlace.schema.spec import EvaluationSpec, format_validation_error

    try:
        spec_data = None
        if data is not None:
            if isinstance(data, dict):
                spec_data = _data_spec(data, data_format=None)
            else:
                fmt = data_format or ("text" if str(data).startswith("builtin:english") else "finevision")
                spec_data = _data_spec(data, data_format=fmt, max_samples=max_samples)
        spec = EvaluationSpec(
            benchmarks=list(benchmarks),
            data=spec_data,
            max_samples=max_samples,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            speed=speed,
        )
    except ValidationError as err:
        raise InterlaceError(
            format_validation_error(err, prefix="--" if _cli else "").replace("\n", "; ")
        ) from None

    from interlace.stages.evaluate import check_benchmarks

    check_benchmarks(spec)  # bad benchmarks fail before any model loads
    out = Path(output) if output is not None else None
    if out is not None and out.is_dir():
        raise InterlaceError(
            f"{_arg('output', out, _cli)} is a directory; give a file name like results.json"
        )

    from interlace.stages.evaluate import evaluate as _evaluate

    b = _load(base, device=device)
    p = _load(pruned, device=device)
    results = _evaluate(spec, base=b.model, pruned=p.model, processor=b.processor, max_length=max_length)
    if out is not None:
        atomic_write_json(out, results.to_wire())
    return results


# ------------------------------------------------------------------------------------------- run


def run(
    job: PruneJob | dict[str, Any] | str | Path,
    *,
    output: str | Path | None = None,
    workers: int | None = None,
    max_steps: int | None = None,
    local: bool = True,
    reporter: Reporter | None = None,
    quiet: bool = False,
) -> PruneResult | SweepResult:
    """Run a PruneJob end to end, as `interlace run -f` does, and return its PruneResult (a
    SweepResult, one variant per ratio, when the job sets spec.pruning.ratios).

    The job is validated first (SpecError naming every bad field, before torch or Ray is imported).
    Progress goes to the console (unless `quiet`), to `<output>/progress.jsonl`, and to `reporter`.
    Ray: a private local cluster (`local=True`, the default here), else the one RAY_ADDRESS names.
    """
    from interlace.pipeline.job import run_job

    run = run_job(
        load_job(job), output=output, workers=workers, max_steps=max_steps, local=local,
        sinks=_sinks(reporter, quiet),
    )
    if run.sweep is not None:  # spec.pruning.ratios: a SweepResult, one variant per ratio
        return run.sweep
    assert run.results is not None
    return result_of_run(run.output_dir, run.results)


def sweep(
    job: PruneJob | dict[str, Any] | str | Path,
    ratios: Sequence[float],
    *,
    output: str | Path | None = None,
    workers: int | None = None,
    max_steps: int | None = None,
    local: bool = True,
    reporter: Reporter | None = None,
    quiet: bool = False,
) -> SweepResult:
    """A ratio sweep of a PruneJob: one analysis, one variant per ratio (interlace.pipeline.sweep); the job's
    own ratio/numLayers is replaced by each ratio. Returns a SweepResult (`.variants`, `.table()`)."""
    from interlace.pipeline.job import run_job

    run = run_job(
        load_job(job), output=output, workers=workers, max_steps=max_steps, ratios=ratios, local=local,
        sinks=_sinks(reporter, quiet),
    )
    assert run.sweep is not None
    return run.sweep


def _sinks(reporter: Reporter | None, quiet: bool) -> list[Reporter]:
    """The console (unless `quiet`) and the caller's reporter; the entry adds <output>/progress.jsonl."""
    sinks: list[Reporter] = []
    if not quiet:
        from interlace.runtime.console import ConsoleReporter

        sinks.append(ConsoleReporter())
    if reporter is not None:
        sinks.append(reporter)
    return sinks


def result_of_run(output_dir: Path, results: Results) -> PruneResult:
    """A PruneResult from a finished run's output directory (plan.json) and its Results."""
    from interlace.schema.spec import LayerPlan

    plan_doc = json.loads((output_dir / "plan.json").read_text())
    model_dir = output_dir / "model"
    return PruneResult(
        plan=LayerPlan.model_validate(plan_doc),
        model_dir=model_dir if model_dir.is_dir() else None,
        model_uri=results.output_uri,
        results=results,
        output_dir=output_dir,
    )


__all__ = [
    "PruneResult",
    "analyze",
    "evaluate",
    "finetune",
    "load_job",
    "plan",
    "prune",
    "run",
    "sweep",
    "validate",
]
