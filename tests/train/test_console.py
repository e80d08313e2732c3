"""The console sink: readable stage lines, a progress bar on a terminal, rate-limited lines in a log."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from interlace.runtime.console import ConsoleReporter, describe, summary_table
from interlace.runtime.progress import Reporter
from interlace.schema.spec import BenchmarkResult, LayerPlan, Results
from interlace.schema.status import Phase, Progress


def _p(step: int, total: int = 100) -> Progress:
    return Progress(
        percent=100 * step / total, step=step, total_steps=total, loss=2.5 - step / 100,
        learning_rate=1e-5, tokens_per_second=1234.0, eta_seconds=3725.0,
    )


def test_describe_has_step_loss_lr_tokens_eta() -> None:
    assert describe(_p(7)) == "step 7/100  loss 2.4300  lr 1.00e-05  1,234 tok/s  eta 1:02:05"
    assert describe(Progress(percent=50, message="calibration")) == "calibration"


def test_log_output_is_rate_limited_but_keeps_the_last_step() -> None:
    buf = io.StringIO()
    rep = ConsoleReporter(Console(file=buf, force_terminal=False, width=200), log_interval=3600)
    assert isinstance(rep, Reporter)
    rep.stage(Phase.FINETUNING, "layers [3, 7]")
    for step in range(1, 101):
        rep.progress(_p(step))
    rep.close()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "==> Finetuning: layers [3, 7]"
    progress_lines = [line for line in lines if "step " in line]
    assert len(progress_lines) == 2  # the first one, then nothing for an hour, then the final step
    assert "step 1/100" in progress_lines[0] and "step 100/100" in progress_lines[1]


@pytest.mark.parametrize("uptime", [0.5, 30.0, 7200.0])
def test_first_line_is_logged_whatever_the_machine_uptime(monkeypatch: pytest.MonkeyPatch, uptime: float) -> None:
    # The monotonic clock counts from boot: on a machine up for less than log_interval a 0.0
    # "last line" sentinel made the first progress line disappear (a fresh CI machine failed here).
    clock = iter([uptime + 0.1 * i for i in range(1000)])
    monkeypatch.setattr("interlace.runtime.console.time.monotonic", lambda: next(clock))
    buf = io.StringIO()
    rep = ConsoleReporter(Console(file=buf, force_terminal=False, width=200), log_interval=3600)
    rep.stage(Phase.FINETUNING)
    rep.progress(_p(1))
    rep.progress(_p(2))
    lines = [line for line in buf.getvalue().splitlines() if "step " in line]
    assert len(lines) == 1 and "step 1/100" in lines[0]


def test_terminal_gets_a_progress_bar() -> None:
    buf = io.StringIO()
    rep = ConsoleReporter(Console(file=buf, force_terminal=True, width=160))
    rep.stage(Phase.FINETUNING)
    for step in range(1, 11):
        rep.progress(_p(step, 10))
    rep.close()
    out = buf.getvalue()
    assert "10/10" in out and "loss" in out


def test_plan_and_summary_tables() -> None:
    buf = io.StringIO()
    rep = ConsoleReporter(Console(file=buf, width=160))
    plan = LayerPlan(num_layers=8, strategy="interlace", drop=[2, 5], finetune=[1, 4], anchor=[3, 6], frozen=[0, 7])
    rep.plan(plan)
    res = Results(
        layers_before=8, layers_after=6, params_before=1000, params_after=800,
        benchmarks=[BenchmarkResult(name="perplexity", base=10.0, pruned=12.5, relative=80.0, metric="perplexity")],
        relative_performance=80.0,
    )
    rep.console.print(summary_table(res, output_dir="/tmp/x"))
    out = buf.getvalue()
    assert "drop 2 of 8" in out and "2, 5" in out and "1, 4" in out
    assert "8 -> 6" in out and "20.0% fewer" in out and "80.0%" in out and "/tmp/x" in out
