"""Strategy auto: probe several strategies' plans, then run the full pipeline on the best.

    spec:
      pruning:
        ratio: 0.25
        strategy: auto
        candidates: [interlace, shortgpt, consecutive]   # the default
        probe: {proxySteps: 10, tieMargin: 0.005}         # the defaults

One analysis of the base model (as a sweep or a target does: ``<output>/analysis/scores.json``), then
one plan per candidate at the spec's ratio or numLayers, from the same scores (same protected and
DeepStack layers, same seed). A candidate that cannot plan that many layers here (INTERLACE's windows
blocked by protected layers, say) is a row of the table in state CannotPlan, not a failure. Every other
candidate gets a probe (interlace.pipeline.probe.run_probe: surgery, probe.proxySteps of finetuning,
evaluation on spec.evaluation) in ``<output>/probes/<strategy>/``, saved there and never published. The
probes run concurrently, as a sweep's variants do (all started at once when Ray is up, each its own
Ray Train run; one at a time in this process otherwise).

The winner (`choose`) is the candidate with the best probe retention, except that a tie goes to
interlace: when interlace's probe is within probe.tieMargin (a fraction, default 0.005 = 0.5
percentage points) of the best one, interlace wins. One probe per candidate measures no spread, so
the margin is fixed by the spec rather than measured; raise it for noisier evaluations. The winner's
plan then runs the full pipeline (spec.finetune's whole schedule), published at spec.output.

Reported as each probe ends: status.results.auto (every candidate: layers dropped, probe retention,
chosen, reason) and the one-line status.results.summary. A candidate whose probe fails is a Failed
row; the job fails only when no candidate has a probe retention to compare. A dry run stops after the
plans (``<output>/probes/<strategy>/plan.json``; ``<output>/plan.json`` is the first candidate's that
plans), with no probe.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from interlace.artifacts import atomic_write_json
from interlace.errors import InterlaceError
from interlace.pipeline.probe import retention_of, run_probe
from interlace.pipeline.sweep import amount_job, analyze_once, stage_plan
from interlace.runtime.progress import Reporter, SubRunReporter
from interlace.schema.spec import AutoResult, CandidateResult, LayerPlan, PruneJob, Results, Strategy
from interlace.schema.status import Phase

# Float slack of the tie rule: a retention exactly tieMargin below the best is a tie.
_EPS = 1e-9


def choose(retentions: Sequence[tuple[Strategy, float | None]], tie_margin: float) -> tuple[int, str]:
    """The winner among (strategy, probe retention) rows, as (index, why). None retentions (no plan, a
    failed probe) do not compete. The best retention wins (the first listed among equals); when
    interlace is within `tie_margin` of the best, interlace wins the tie."""
    scored = [(i, s, r) for i, (s, r) in enumerate(retentions) if r is not None]
    if not scored:
        raise InterlaceError("strategy auto: no candidate has a probe retention to compare")
    best_i, best_s, best = max(scored, key=lambda x: (x[2], -x[0]))
    others = sorted((r, s) for i, s, r in scored if i != best_i)
    if best_s != Strategy.INTERLACE:
        for i, s, r in scored:
            if s == Strategy.INTERLACE and r >= best - tie_margin - _EPS:
                return i, (
                    f"interlace {r:.1%} is within the tie margin {tie_margin * 100:g} pp of the best probe "
                    f"({best_s} {best:.1%}); a tie goes to interlace"
                )
    if not others:
        return best_i, f"the only candidate with a probe retention ({best:.1%})"
    runner_r, runner_s = others[-1]
    if runner_r == best:
        return best_i, f"best probe retention {best:.1%}, equal to {runner_s}'s; the first listed of equals wins"
    return best_i, (
        f"best probe retention {best:.1%}, {(best - runner_r) * 100:.1f} pp above the next ({runner_s} "
        f"{runner_r:.1%})"
    )


def summary(auto: AutoResult) -> str:
    """`auto: interlace 92.1% (chosen), shortgpt 90.3%, consecutive CannotPlan`: the kubectl column."""

    def cell(c: CandidateResult) -> str:
        value = f"{c.retention:.1%}" if c.retention is not None else c.state
        return f"{c.strategy} {value}" + (" (chosen)" if c.chosen else "")

    return "auto: " + ", ".join(cell(c) for c in auto.candidates)


class _Table:
    """The candidates as status.results.auto: updated by every probe's thread, sent after each change."""

    def __init__(self, parent: Reporter, base: Results, record: AutoResult, out: Path) -> None:
        self.parent = parent
        self.lock = threading.Lock()
        self.base = base
        self.record = record
        self.out = out

    def results(self) -> Results:
        return self.base.model_copy(update={"auto": self.record.model_copy(deep=True), "summary": summary(self.record)})

    def publish(self) -> None:
        res = self.results()
        atomic_write_json(self.out / "results.json", res.to_wire())
        self.parent.results(res)

    def update(self, i: int, **fields: Any) -> None:
        with self.lock:
            rows = self.record.candidates
            rows[i] = rows[i].model_copy(update=fields)
            self.publish()


def run_auto(job: PruneJob, *, output_dir: str | Path, reporter: Reporter) -> Results:
    """Plan every candidate from one analysis, probe each, run the full pipeline on the winner."""
    from interlace.pipeline.run import run_pipeline
    from interlace.stages.plan import select_layers

    spec = job.spec
    pruning = spec.pruning
    if pruning.strategy != Strategy.AUTO:
        raise InterlaceError("spec.pruning.strategy: not auto")
    if not spec.evaluation.enabled:  # the spec refuses it too; a job built in Python may skip that
        raise InterlaceError("spec.pruning.strategy: auto needs spec.evaluation.enabled")
    if pruning.ratio is None and pruning.num_layers is None:
        raise InterlaceError("spec.pruning.strategy: auto needs spec.pruning.ratio or spec.pruning.numLayers")
    candidates = pruning.auto_candidates
    probe_spec = pruning.auto_probe
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    # ---- the one analysis (a dry run dropping one seeded-random layer: the scores, whatever the candidates)
    analysis_dir = out / "analysis"
    base, scores, protected = analyze_once(
        job, {"num_layers": 1, "strategy": Strategy.RANDOM}, analysis_dir, reporter
    )
    num_layers = scores.num_layers
    try:
        n = pruning.layers_to_drop(num_layers)
    except ValueError as err:
        raise InterlaceError(f"{pruning.amount_field()}: {err}") from None
    amount: dict[str, Any] = {"ratio": pruning.ratio} if pruning.ratio is not None else {"num_layers": n}

    # ---- one plan per candidate, from the same scores
    record = AutoResult(proxy_steps=probe_spec.proxy_steps, tie_margin=probe_spec.tie_margin)
    plans: dict[int, LayerPlan] = {}
    for i, strategy in enumerate(candidates):
        try:
            plan = select_layers(
                scores, n_drop=n, strategy=strategy, protected=sorted(protected), seed=pruning.seed,
                ratio=pruning.ratio,
            )
        except InterlaceError as err:
            record.candidates.append(
                CandidateResult(strategy=strategy, state="CannotPlan", layers_dropped=n, reason=str(err)[:1000])
            )
            continue
        plans[i] = plan
        stage_plan(plan, out / "probes" / str(strategy), analysis_dir)
        record.candidates.append(
            CandidateResult(strategy=strategy, state="Planned", layers_dropped=n, drop=list(plan.drop))
        )
    reporter.stage(
        Phase.PLANNING,
        f"auto: drop {n} of {num_layers} layers; "
        + "; ".join(f"{c.strategy}: {c.drop if c.state == 'Planned' else 'cannot plan'}" for c in record.candidates),
    )
    table = _Table(reporter, Results(layers_before=num_layers, params_before=base.params_before), record, out)
    if not plans:
        table.publish()
        raise InterlaceError(
            f"spec.pruning.candidates: none of {', '.join(map(str, candidates))} can plan dropping {n} of "
            f"{num_layers} layers here (status.results.auto says why each); lower the amount or list "
            "other candidates"
        )
    if spec.dry_run:  # the plans only: probes would prune and train
        from interlace.stages.plan import save_plan

        save_plan(plans[min(plans)], out / "plan.json")
        record.reason = f"dry run: {len(plans)} of {len(candidates)} candidates planned; no probe ran"
        table.publish()
        return table.results()

    # ---- the probes, concurrently (each its own Ray Train run on the shared cluster when Ray is up)
    from interlace.pipeline.remote import ray_is_up

    width = len(plans) if ray_is_up() else 1
    reporter.stage(Phase.EVALUATING, f"auto: {len(plans)} probes, {width} at once")
    table.publish()

    def one(i: int) -> None:
        strategy = candidates[i]
        table.update(i, state="Running")
        try:
            res = run_probe(
                job, plans[i], probe_dir=out / "probes" / str(strategy), analysis_dir=analysis_dir,
                proxy_steps=probe_spec.proxy_steps,
                reporter=SubRunReporter(reporter, f"probe {strategy}: ", table.lock),
            )
        except Exception as err:  # recorded; the others still compete
            table.update(i, state="Failed", reason=f"{type(err).__name__}: {err}"[:1000])
            return
        retention = retention_of(res)
        table.update(
            i, state="Probed", retention=retention,
            reason=None if retention is not None else "its evaluation gave no retention",
        )

    with ThreadPoolExecutor(max_workers=width, thread_name_prefix="probe") as pool:
        for f in [pool.submit(one, i) for i in sorted(plans)]:
            f.result()

    # ---- the winner
    rows = record.candidates
    try:
        win, why = choose([(c.strategy, c.retention) for c in rows], probe_spec.tie_margin)
    except InterlaceError:
        table.publish()
        raise InterlaceError(
            "spec.pruning.strategy: auto: no candidate's probe gave a retention (status.results.auto has "
            "each one's reason)"
        ) from None
    best = rows[win].retention
    assert best is not None
    for i, c in enumerate(rows):
        if i == win:
            rows[i] = c.model_copy(update={"chosen": True, "reason": why})
        elif c.retention is not None:
            d = (c.retention - best) * 100
            if d == 0:
                behind = "equal to the winner's; the first listed of equals wins"
            elif d < 0:
                behind = f"{-d:.1f} pp below the winner"
            else:
                behind = f"{d:.1f} pp above the winner, within the tie margin"
            rows[i] = c.model_copy(update={"reason": behind})
    record.winner = rows[win].strategy
    record.reason = f"{rows[win].strategy}: {why}"
    table.publish()

    # ---- the winner's plan, with the full finetune, published at spec.output
    winner = rows[win].strategy
    stage_plan(plans[win], out, analysis_dir)
    reporter.stage(Phase.PLANNING, f"auto: {winner} wins ({why}); drop {plans[win].drop}")
    final_job = amount_job(job, {**amount, "strategy": winner}, spec.output.uri)
    final = run_pipeline(final_job, output_dir=out, reporter=reporter)
    record.final_retention = retention_of(final)
    res = final.model_copy(update={"auto": record, "summary": summary(record)})
    atomic_write_json(out / "results.json", res.to_wire())
    reporter.results(res)
    return res
