"""`evaluate`: score the pruned and the unpruned model on the same benchmarks and time them.

Benchmarks (spec.evaluation.benchmarks):

* ``perplexity``: assistant-token perplexity on ``spec.evaluation.data`` (held out). If that is unset,
  the finetuning data is used and the benchmark is named ``perplexity (finetune data)`` so the status
  never claims a held-out figure it does not have. With ``spec.evaluation.outOfDomainData`` it is
  scored twice: ``perplexity (out of domain)`` on that text (domain ``out``, the headline) and
  ``perplexity (in domain)`` on the held-out text of the finetuning corpus (domain ``in``, reported
  beside it and left out of relativePerformance: it rewards adapting to the finetuning corpus).
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
from pathlib import Path
from typing import Any

from interlace.data.sample import Sample
from interlace.errors import InterlaceError
from interlace.runtime.progress import NullReporter, Reporter
from interlace.schema.spec import BenchmarkResult, DataSpec, EvaluationSpec, Results
from interlace.schema.status import Progress
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
    interlace.builtin.easyvqa), else a path with an optional `vqa:` prefix."""
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
            if spec.data is None and finetune_data is None and spec.out_of_domain_data is None:
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
    if spec.out_of_domain_data is not None and "perplexity" not in spec.benchmarks:
        raise InterlaceError(
            "spec.evaluation.outOfDomainData is scored by the perplexity benchmark; add `perplexity` to "
            "spec.evaluation.benchmarks or remove outOfDomainData"
        )


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


def perplexity_sets(
    spec: EvaluationSpec, *, finetune_data: DataSpec | None = None
) -> list[tuple[str, str | None, list[Sample]]]:
    """(benchmark name, domain, samples) of every perplexity the `perplexity` benchmark reports:
    one set (domain None) without spec.outOfDomainData, else out of domain first, then in domain."""
    from interlace.data import load_samples

    ood = spec.out_of_domain_data
    if ood is None:
        label = "perplexity" if spec.data is not None else "perplexity (finetune data)"
        return [(label, None, heldout_samples(spec, finetune_data=finetune_data))]
    out_samples = list(load_samples(ood, limit=spec.max_samples))
    if not out_samples:
        raise InterlaceError("spec.evaluation.outOfDomainData yields no samples; point it at readable conversations")
    sets: list[tuple[str, str | None, list[Sample]]] = [("perplexity (out of domain)", "out", out_samples)]
    if spec.data is not None or finetune_data is not None:
        label = "perplexity (in domain)" if spec.data is not None else "perplexity (in domain, finetune data)"
        sets.append((label, "in", heldout_samples(spec, finetune_data=finetune_data)))
    return sets


def headline(benchmarks: list[BenchmarkResult]) -> float | None:
    """relativePerformance: the mean over the benchmarks, leaving out the in-domain perplexity when an
    out-of-domain one is there (an in-domain gain is adaptation to the finetuning corpus)."""
    has_out = any(b.domain == "out" for b in benchmarks)
    return relative_performance([b for b in benchmarks if not (has_out and b.domain == "in")])


def retention_fields(benchmarks: list[BenchmarkResult]) -> dict[str, float | None]:
    """Results.retention_out_of_domain / retention_in_domain from the labelled perplexities."""
    out: dict[str, float | None] = {"retention_out_of_domain": None, "retention_in_domain": None}
    for b in benchmarks:
        if b.domain == "out":
            out["retention_out_of_domain"] = b.relative
        elif b.domain == "in":
            out["retention_in_domain"] = b.relative
    return out


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
        if name == "perplexity":
            for label, domain, ppl_samples in perplexity_sets(spec, finetune_data=finetune_data):
                if samples is None or domain == "in":  # speed prompts: the finetuning domain's text
                    samples = ppl_samples
                kw = {"batch_size": spec.batch_size, "max_length": max_length}
                b, p = perplexity(base, processor, ppl_samples, **kw), perplexity(pruned, processor, ppl_samples, **kw)
                result = benchmark_result(label, b, p, metric="perplexity").model_copy(update={"domain": domain})
                log.info("%s: base %.4g, pruned %.4g (%s)", label, b, p,
                         "n/a" if result.relative is None else f"{result.relative:.1f}%")
                benchmarks.append(result)
            done += 1
            continue
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
        relative_performance=headline(benchmarks),
        **retention_fields(benchmarks),
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
