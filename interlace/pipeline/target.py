"""A retention target: drop as many layers as possible while keeping `minRetention`.

    spec:
      pruning:
        target: {minRetention: 0.9, maxRatio: 0.5, proxySteps: 10}

Users ask "how small can it get while keeping 90%?", not "drop 20%". One analysis of the base model
(as a sweep does: ``<output>/analysis/scores.json``) gives a family of nested plans: the selection is
greedy over ranked windows, so the plan dropping n+1 layers is the plan dropping n plus one more
window's layer. The job searches that family by bisection for the largest n whose *probe* keeps the
target: a probe (interlace.pipeline.probe.run_probe) is the pipeline on plan n (surgery, ``proxySteps`` of
finetuning, evaluation on spec.evaluation) in ``<output>/probes/drop-<n>/``, saved there and never
published. Bisection
assumes retention falls as more layers go (true of nested plans up to evaluation noise); it takes
about log2(maxRatio * L) probes. The chosen plan then runs the full pipeline (spec.finetune's whole
schedule) and is published at spec.output; its measured retention is reported beside the target.

Reported, as each probe ends: status.results.target (every probe: layers dropped, proxy retention,
whether it met the target) and the one-line status.results.summary. A target that no probe meets
fails the job, naming the smallest drop's retention; a chosen plan whose final retention falls
below the target is published and reported as a miss (`met: false`, the summary says MISSED), never
hidden.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from interlace.artifacts import atomic_write_json
from interlace.errors import InterlaceError
from interlace.pipeline.probe import retention_of, run_probe
from interlace.pipeline.sweep import amount_job, analyze_once, stage_plan
from interlace.runtime.progress import Reporter, SubRunReporter
from interlace.schema.limits import max_drop
from interlace.schema.spec import LayerPlan, ProbeResult, PruneJob, Results, TargetResult
from interlace.schema.status import Phase


def summary(t: TargetResult) -> str:
    """`target 90%: -6 layers 92.1% (met)`; while searching, the probes so far."""
    want = f"target {t.min_retention * 100:g}%"
    if t.final_retention is not None and t.layers_dropped is not None:
        verdict = "met" if t.met else "MISSED"
        return f"{want}: -{t.layers_dropped} layers {t.final_retention * 100:.1f}% ({verdict})"
    probes = ", ".join(
        f"-{p.layers_dropped}: {'?' if p.retention is None else f'{p.retention * 100:.1f}%'}" for p in t.probes
    )
    return f"{want}: probes {probes}" if probes else f"{want}: analysing"


def bisect_largest(most: int, meets: Callable[[int], bool]) -> int:
    """The largest n in 1..most with meets(n), assuming meets is true up to some n and false after
    (0 if meets(1) is false). Calls meets about log2(most + 1) times."""
    lo, hi = 0, most + 1  # meets(lo) is taken as true (nothing dropped), meets(hi) as false
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(mid):
            lo = mid
        else:
            hi = mid
    return lo


def run_target(job: PruneJob, *, output_dir: str | Path, reporter: Reporter) -> Results:
    """Search spec.pruning.target's plan family, then run the full pipeline on the chosen plan."""
    from interlace.pipeline.run import run_pipeline
    from interlace.stages.plan import select_layers

    target = job.spec.pruning.target
    if target is None:
        raise InterlaceError("spec.pruning.target: not set")
    spec = job.spec
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not spec.evaluation.enabled:
        raise InterlaceError(
            "spec.pruning.target needs spec.evaluation.enabled: retention is what the probes measure"
        )

    # ---- the one analysis (a dry run dropping one layer: the scores)
    analysis_dir = out / "analysis"
    base, scores, protected = analyze_once(job, {"num_layers": 1}, analysis_dir, reporter)
    num_layers = scores.num_layers
    most = min(math.floor(num_layers * target.max_ratio), max_drop(num_layers))
    if most < 1:
        raise InterlaceError(
            f"spec.pruning.target.maxRatio: {target.max_ratio} allows no layer of a {num_layers}-layer model "
            f"to drop; use a maxRatio >= {1 / num_layers:.3f}"
        )
    plans: dict[int, LayerPlan] = {}

    def plan_for(n: int) -> LayerPlan:
        if n not in plans:
            plans[n] = select_layers(
                scores,
                n_drop=n,
                strategy=str(spec.pruning.strategy),
                protected=sorted(protected),
                seed=spec.pruning.seed,
            )
        return plans[n]

    # The strategy may fit fewer layers than maxRatio allows (windows blocked by protected layers,
    # triplets that overlap): the family ends at the largest drop it can plan.
    while most > 0:
        try:
            plan_for(most)
            break
        except InterlaceError:
            most -= 1
    if most < 1:
        raise InterlaceError(f"spec.pruning.strategy {spec.pruning.strategy}: cannot plan dropping even one layer")
    record = TargetResult(min_retention=target.min_retention, max_layers=most)
    searching = Results(layers_before=num_layers, params_before=base.params_before)
    if spec.dry_run:  # the analysis and the plan family; probes would prune and train
        from interlace.stages.plan import save_plan

        save_plan(plan_for(most), out / "plan.json")
        record.message = (
            f"dry run: the analysis allows plans dropping 1..{most} of {num_layers} layers (plan.json is the "
            "largest); no probe ran"
        )
        res = searching.model_copy(update={"target": record, "summary": f"target {target.min_retention * 100:g}%: dry run"})
        atomic_write_json(out / "results.json", res.to_wire())
        reporter.results(res)
        return res

    def publish_record() -> None:
        res = searching.model_copy(update={"target": record, "summary": summary(record)})
        atomic_write_json(out / "results.json", res.to_wire())
        reporter.results(res)

    def meets(n: int) -> bool:
        plan = plan_for(n)
        reporter.stage(Phase.EVALUATING, f"probe: drop {n} of {num_layers} layers ({plan.drop})")
        res = run_probe(
            job, plan, probe_dir=out / "probes" / f"drop-{n}", analysis_dir=analysis_dir,
            proxy_steps=target.proxy_steps, reporter=SubRunReporter(reporter, f"probe drop-{n}: "),
        )
        retention = retention_of(res)
        ok = retention is not None and retention >= target.min_retention
        record.probes.append(ProbeResult(layers_dropped=n, retention=retention, meets=ok))
        publish_record()
        return ok

    publish_record()
    chosen = bisect_largest(most, meets)
    if chosen == 0:
        first = next(p for p in record.probes if p.layers_dropped == 1)
        record.message = (
            f"no plan keeps {target.min_retention * 100:g}%: dropping 1 layer kept "
            f"{'unknown' if first.retention is None else f'{first.retention:.1%}'} after {target.proxy_steps} "
            "proxy steps"
        )
        record.met = False
        publish_record()
        raise InterlaceError(
            f"spec.pruning.target.minRetention {target.min_retention}: {record.message}. Lower minRetention, "
            "raise proxySteps, or set spec.pruning.ratio to prune anyway"
        )
    record.layers_dropped = chosen
    publish_record()

    # ---- the chosen plan, with the full finetune, published at spec.output
    stage_plan(plan_for(chosen), out, analysis_dir)
    reporter.stage(Phase.PLANNING, f"target {target.min_retention * 100:g}%: drop {chosen} of {num_layers} layers")
    final_job = amount_job(job, {"num_layers": chosen}, spec.output.uri)
    final = run_pipeline(final_job, output_dir=out, reporter=reporter)
    record.final_retention = None if final.relative_performance is None else final.relative_performance / 100
    record.met = record.final_retention is not None and record.final_retention >= target.min_retention
    proxy = next(p.retention for p in record.probes if p.layers_dropped == chosen)
    record.message = (
        f"dropped {chosen} of {num_layers} layers; retention {_pct(record.final_retention)} after the full "
        f"finetune (probe: {_pct(proxy)}), target {target.min_retention * 100:g}%: "
        + ("met" if record.met else "MISSED")
    )
    res = final.model_copy(update={"target": record, "summary": summary(record)})
    atomic_write_json(out / "results.json", res.to_wire())
    reporter.results(res)
    return res


def _pct(x: float | None) -> str:
    return "unknown" if x is None else f"{x:.1%}"
