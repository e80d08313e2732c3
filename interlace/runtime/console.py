"""The console sink: what a person running `interlace run` sees.

On a terminal: a line per stage, a rich progress bar for finetuning steps (loss, learning rate,
tokens/s, ETA) and for any other stage that reports a step count, a table of the chosen layers and a
summary table at the end. In a log (a Ray job's stdout, CI) there is no live display to redraw, so
progress becomes plain lines, at most one every `log_interval` seconds (plus the last step): a
thousand-step run does not write a thousand lines into a pod log.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from interlace.schema.spec import LayerPlan, Results
from interlace.schema.status import Phase
from interlace.schema.status import Progress as ProgressModel


def _fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def describe(p: ProgressModel) -> str:
    """One line for a progress payload: step, loss, lr, tokens/s, ETA (whatever is set)."""
    bits = []
    if p.step is not None and p.total_steps:
        bits.append(f"step {p.step}/{p.total_steps}")
    if p.loss is not None:
        bits.append(f"loss {p.loss:.4f}")
    if p.learning_rate is not None:
        bits.append(f"lr {p.learning_rate:.2e}")
    if p.tokens_per_second is not None:
        bits.append(f"{p.tokens_per_second:,.0f} tok/s")
    if p.eta_seconds is not None:
        bits.append(f"eta {_fmt_eta(p.eta_seconds)}")
    if not bits and p.message:
        bits.append(p.message)
    return "  ".join(bits) if bits else f"{p.percent:.0f}%"


class ConsoleReporter:
    """A `interlace.runtime.progress.Reporter` that writes to a rich console."""

    def __init__(self, console: Console | None = None, *, log_interval: float = 10.0) -> None:
        self.console = console or Console(stderr=True)
        self.log_interval = log_interval
        self._stage: Phase | str | None = None
        self._bar: Progress | None = None
        self._task: Any = None
        # None until the first line: the monotonic clock starts near 0 on a freshly booted machine,
        # so a 0.0 sentinel would swallow the first line whenever uptime < log_interval.
        self._last_line: float | None = None

    # -- Reporter protocol
    def stage(self, stage: Phase, message: str = "") -> None:
        self._stop_bar()
        self._stage = stage
        suffix = f": {message}" if message else ""
        self.console.print(f"[bold cyan]==> {stage}[/]{suffix}", highlight=False)

    def progress(self, progress: ProgressModel) -> None:
        line = describe(progress)
        if self.console.is_terminal and progress.total_steps:
            self._ensure_bar(progress.total_steps)
            assert self._bar is not None
            self._bar.update(self._task, completed=progress.step or 0, total=progress.total_steps, info=line)
            return
        now = time.monotonic()
        final = progress.total_steps is not None and progress.step == progress.total_steps
        if final or self._last_line is None or now - self._last_line >= self.log_interval:
            self._last_line = now
            self.console.print(f"    {self._stage or ''} {line}", highlight=False)

    def plan(self, plan: LayerPlan) -> None:
        self._stop_bar()
        self.console.print(plan_table(plan))

    def results(self, results: Results) -> None:
        self._stop_bar()

    def close(self) -> None:
        self._stop_bar()

    # -- internals
    def _ensure_bar(self, total: int) -> None:
        if self._bar is not None:
            return
        self._bar = Progress(
            TextColumn("    {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.console,
            refresh_per_second=4,
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(str(self._stage or "progress"), total=total, info="")

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None


def plan_table(plan: LayerPlan) -> Table:
    """The layer plan as a table: one row per decoder layer that is not plainly frozen."""
    t = Table(title=f"Layer plan ({plan.strategy}): drop {len(plan.drop)} of {plan.num_layers}")
    t.add_column("role")
    t.add_column("layers (original indices)")
    t.add_row("drop", ", ".join(map(str, plan.drop)) or "-")
    t.add_row("finetune", ", ".join(map(str, plan.finetune)) or "-")
    t.add_row("anchor (frozen)", ", ".join(map(str, plan.anchor)) or "-")
    t.add_row("other frozen", f"{len(plan.frozen)} layers")
    return t


def summary_table(results: Results, *, output_dir: Path | str, extra: dict[str, str] | None = None) -> Table:
    """The end-of-run summary `interlace run` prints."""
    t = Table(title="interlace run: summary")
    t.add_column("what")
    t.add_column("value", overflow="fold")
    if results.layers_before is not None:
        t.add_row("decoder layers", f"{results.layers_before} -> {results.layers_after}")
    if results.params_before is not None and results.params_after is not None:
        t.add_row(
            "parameters",
            f"{results.params_before:,} -> {results.params_after:,} "
            f"({100 * (1 - results.params_after / results.params_before):.1f}% fewer)",
        )
    for b in results.benchmarks:
        rel = f" ({b.relative:.1f}%)" if b.relative is not None else ""
        t.add_row(f"{b.name} [{b.metric}]", f"base {b.base:.4g} -> pruned {b.pruned:.4g}{rel}")
    retention = results.retention_line()
    if retention is not None:  # `retention (out of domain) X%, in domain Y%`
        t.add_row("retention", retention.removeprefix("retention "))
    if results.relative_performance is not None:
        t.add_row("relative performance", f"{results.relative_performance:.1f}%")
    if results.prefill_speedup is not None:
        t.add_row("prefill speedup", f"{results.prefill_speedup:.2f}x")
    if results.decode_speedup is not None:
        t.add_row("decode speedup", f"{results.decode_speedup:.2f}x")
    if results.target is not None:  # spec.pruning.target: the search and the verdict
        for p in results.target.probes:
            ret = "n/a" if p.retention is None else f"{p.retention:.1%}"
            t.add_row(f"probe: drop {p.layers_dropped}", f"{ret} ({'meets' if p.meets else 'below'} the target)")
        t.add_row("retention target", results.target.message or "")
    if results.auto is not None:  # spec.pruning.strategy auto: the probe table and the winner
        for c in results.auto.candidates:
            ret = f"{c.retention:.1%}" if c.retention is not None else c.state
            drop = f"drop {c.drop}" if c.drop else f"{c.layers_dropped} layers"
            mark = "chosen: " if c.chosen else ""
            t.add_row(f"probe: {c.strategy}", f"{ret}, {drop}; {mark}{c.reason or c.state}")
        if results.auto.winner is not None:
            t.add_row("strategy auto", results.auto.reason or str(results.auto.winner))
        elif results.auto.reason:
            t.add_row("strategy auto", results.auto.reason)
    for k, v in (extra or {}).items():
        t.add_row(k, v)
    t.add_row("output", str(results.output_uri or output_dir))
    return t
