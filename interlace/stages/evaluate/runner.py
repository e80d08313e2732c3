"""`evaluate`: score the pruned and the unpruned model on the same benchmarks and time them.

Benchmarks (spec.evaluation.benchmarks):

* ``perplexity``: assistant-token perplexity on ``spec.evaluation.data`` (held out). If that is unset,
  the finetuning data is used and the benchmark is named ``perplexity (finetune data)`` so the status
  never claims a held-out figure it does not have.
* a path to a local VQA set (``.parquet``/``.jsonl`` file or a directory; ``vqa:`` prefix optional),
  or ``builtin:easy-vqa-test`` (easy-vqa's test split, 9,673 questions): accuracy by the built-in
  evaluator (interlace.stages.evaluate.vqa).
* ``lmms-eval:<task>`` / ``vlmevalkit:<task>``: rejected with a clear message
  (interlace.stages.evaluate.harness).

Both models see exactly the same samples (loaded once). Relative performance is the mean over
benchmarks of pruned/base in percent (interlace.stages.evaluate.relative). With ``spec.evaluation.speed``,
the speed report times both models on the first prompts of the evaluation data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from interlace.data.sample import Sample
from interlace.errors import InterlaceError
from interlace.runtime.progress import NullReporter, Reporter
from interlace.schema.spec import BenchmarkResult, DataSpec, EvaluationSpec, Progress, Results
from interlace.stages.evaluate.harness import check_harness, is_harness_benchmark
from interlace.stages.evaluate.relative import benchmark_result, relative_performance

log = logging.getLogger(__name__)

SPEED_PROMPTS = 4
DEFAULT_SPEED_PROMPT = (
    "Describe in detail what a vision-language model does when it answers a question about an image, "
    "and why removing some of its decoder layers can make it faster."
)


def vqa_path(name: str) -> Path:
    """A benchmark name -> its VQA file: `builtin:easy-vqa-test` (materialised once, see
    interlace.data.easyvqa), else a path with an optional `vqa:` prefix."""
    if name.startswith("builtin:"):
        from interlace.builtin import vqa_set

        return vqa_set(name)
    return Path(name[len("vqa:") :] if name.startswith("vqa:") else name).expanduser()


def check_benchmarks(spec: EvaluationSpec, *, finetune_data: DataSpec | None = None) -> None:
    """Everything cheap that can be wrong with the benchmarks, raised before any model loads."""
    from interlace.stages.evaluate.vqa import load_vqa

    if not spec.benchmarks:
        raise InterlaceError("spec.evaluation.benchmarks is empty; list at least one or set enabled: false")
    for i, name in enumerate(spec.benchmarks):
        where = f"spec.evaluation.benchmarks[{i}]"
        if name == "perplexity":
            if spec.data is None and finetune_data is None:
                raise InterlaceError(f"{where}: perplexity needs spec.evaluation.data (held-out conversations)")
        elif is_harness_benchmark(name):
            check_harness(name, where=where)
        else:
            try:
                load_vqa(vqa_path(name), limit=1)
            except InterlaceError as err:
                raise InterlaceError(
                    f"{where}: {name!r} is not 'perplexity', a harness task, or a readable VQA set: {err}"
                ) from None


def heldout_samples(spec: EvaluationSpec, *, finetune_data: DataSpec | None = None) -> list[Sample]:
    """The conversations perplexity is measured on (spec.evaluation.data, else the finetuning data)."""
    from interlace.data import load_samples

    data = spec.data
    if data is None:
        if finetune_data is None:
            raise InterlaceError("spec.evaluation.data: perplexity needs held-out conversations; set it")
        log.warning(
            "spec.evaluation.data is unset: perplexity is measured on the finetuning data (not held out)"
        )
        data = finetune_data
    samples = list(load_samples(data, limit=spec.max_samples))
    if not samples:
        raise InterlaceError("spec.evaluation.data yields no samples; point it at readable conversations")
    return samples


def _speed_prompts(
    vqa_items: list[Any], samples: list[Sample] | None
) -> tuple[list[str], list[Any | None]]:
    from interlace.stages.evaluate.vqa import format_question

    if vqa_items:
        chosen = vqa_items[:SPEED_PROMPTS]
        return [format_question(it) for it in chosen], [it.image for it in chosen]
    if samples:
        qs, ims = [], []
        for s in samples[:SPEED_PROMPTS]:
            user = next((t.text for t in s.turns if t.role == "user"), None)
            if user:
                qs.append(user)
                ims.append(s.images[0] if s.images else None)
        if qs:
            return qs, ims
    return [DEFAULT_SPEED_PROMPT], [None]


def evaluate(
    spec: EvaluationSpec,
    *,
    base: Any,
    pruned: Any,
    processor: Any,
    reporter: Reporter | None = None,
    finetune_data: DataSpec | None = None,
    max_length: int = 2048,
    speed_repeats: int = 3,
) -> Results:
    """Score base and pruned on spec.benchmarks; fill Results.benchmarks, relativePerformance, speedups.

    Also fills layers/params before/after from the models. The caller (the pipeline) sends the Results
    to the reporter and writes results.json; here the reporter only gets progress per benchmark.
    """
    from interlace.stages.evaluate.perplexity import perplexity
    from interlace.stages.evaluate.vqa import load_vqa, score_vqa

    reporter = reporter or NullReporter()
    check_benchmarks(spec, finetune_data=finetune_data)
    steps = len(spec.benchmarks) + (1 if spec.speed else 0)
    done = 0

    def tick(message: str) -> None:
        reporter.progress(
            Progress(percent=round(100.0 * done / steps, 2), step=done, total_steps=steps, message=message)
        )

    benchmarks: list[BenchmarkResult] = []
    samples: list[Sample] | None = None
    all_items: list[Any] = []
    for name in spec.benchmarks:
        tick(f"evaluating {name}")
        run: Callable[[Any], float]
        if name == "perplexity":
            samples = heldout_samples(spec, finetune_data=finetune_data)
            label = "perplexity" if spec.data is not None else "perplexity (finetune data)"

            def run(model: Any, _s: list[Sample] = samples) -> float:
                return perplexity(model, processor, _s, batch_size=spec.batch_size, max_length=max_length)

            metric = "perplexity"
        else:
            path = vqa_path(name)
            items = load_vqa(path, limit=spec.max_samples)
            all_items.extend(items)
            label = path.stem if path.is_file() else path.name

            def run(model: Any, _i: list[Any] = items) -> float:
                return score_vqa(
                    model, processor, _i, batch_size=spec.batch_size, max_new_tokens=spec.max_new_tokens
                ).accuracy

            metric = "accuracy"
        b, p = run(base), run(pruned)
        result = benchmark_result(label, b, p, metric=metric)
        log.info("%s: base %.4g, pruned %.4g (%s)", label, b, p,
                 "n/a" if result.relative is None else f"{result.relative:.1f}%")
        benchmarks.append(result)
        done += 1

    results = Results(
        benchmarks=benchmarks,
        relative_performance=relative_performance(benchmarks),
        layers_before=_num_layers(base),
        layers_after=_num_layers(pruned),
        params_before=sum(p.numel() for p in base.parameters()),
        params_after=sum(p.numel() for p in pruned.parameters()),
    )
    if spec.speed:
        from interlace.stages.evaluate.speed import measure_speed

        tick("speed report")
        qs, ims = _speed_prompts(all_items, samples)
        report = measure_speed(
            base, pruned, processor, qs, images=ims, new_tokens=max(2, spec.max_new_tokens), repeats=speed_repeats
        )
        results.prefill_speedup = report.prefill_speedup
        results.decode_speedup = report.decode_speedup
        log.info("speed: prefill %.3fx, decode %.3fx", report.prefill_speedup, report.decode_speedup)
        done += 1
    tick("evaluation done")
    return results


def _num_layers(model: Any) -> int | None:
    cfg = model.config
    text = getattr(cfg, "text_config", None) or cfg
    n = getattr(text, "num_hidden_layers", None)
    return int(n) if n is not None else None
