"""Where a run's time went, per test directory, against the budget CI keeps to (issue 23).

A pytest plugin (loaded by tests/conftest.py): at the end of every run it prints one line per
directory under tests/ with the tests run, the sum of their set-up + call + teardown times, and the
directory's budget from tests/budget.toml. Timings on a shared 2-core machine are noisy, so a
directory over its budget is reported, not failed: the figures are for whoever reads the CI log
(docs/testbed.md explains the budget and how it was set).
"""

from __future__ import annotations

import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

BUDGET_FILE = Path(__file__).with_name("budget.toml")


def load_budget(path: Path = BUDGET_FILE) -> dict[str, float]:
    """Seconds per directory (`tests/realnode` ...), from the `[directories]` table."""
    data = tomllib.loads(path.read_text())
    return {str(k): float(v) for k, v in data["directories"].items()}


def directory_of(nodeid: str) -> str:
    """`tests/train/test_fsdp.py::test_x` -> `tests/train`; a module at the top -> `tests`."""
    path = nodeid.split("::", 1)[0]
    parts = path.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


class DirectoryTimes:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.tests: dict[str, set[str]] = defaultdict(set)

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        where = directory_of(report.nodeid)
        self.seconds[where] += report.duration
        self.tests[where].add(report.nodeid)

    def table(self, budget: dict[str, float]) -> list[str]:
        lines = [f"{'directory':<20} {'tests':>5} {'seconds':>8} {'budget':>7}"]
        for where in sorted(self.seconds, key=lambda w: -self.seconds[w]):
            limit = budget.get(where)
            mark = "" if limit is None or self.seconds[where] <= limit else "  OVER"
            shown = "-" if limit is None else f"{limit:.0f}"
            lines.append(f"{where:<20} {len(self.tests[where]):>5} {self.seconds[where]:>8.0f} {shown:>7}{mark}")
        lines.append(f"{'all':<20} {sum(len(t) for t in self.tests.values()):>5} "
                     f"{sum(self.seconds.values()):>8.0f} {sum(budget.get(w, 0.0) for w in self.seconds):>7.0f}")
        return lines

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.seconds:
            return
        terminalreporter.write_sep("=", "seconds per test directory (set-up + call + teardown; budget: tests/budget.toml)")
        for line in self.table(load_budget()):
            terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(DirectoryTimes(), "interlace-directory-times")
