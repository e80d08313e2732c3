"""The per-directory time budget covers every test directory (a new one cannot go unbudgeted), and
the plugin files each test under its directory."""

from __future__ import annotations

from pathlib import Path

from tests.budget import DirectoryTimes, directory_of, load_budget

TESTS = Path(__file__).parent


def test_every_test_directory_has_a_budget() -> None:
    budget = load_budget()
    dirs = {f"tests/{p.parent.relative_to(TESTS).parts[0]}" for p in TESTS.rglob("test_*.py") if p.parent != TESTS}
    assert dirs, "no test directories found"
    assert dirs <= set(budget), f"directories without a budget in tests/budget.toml: {sorted(dirs - set(budget))}"
    assert "tests" in budget  # the modules at the top (test_crd.py, this one)
    assert all(v > 0 for v in budget.values())


def test_times_are_summed_per_directory_and_over_budget_is_marked() -> None:
    assert directory_of("tests/train/test_fsdp.py::test_x[2]") == "tests/train"
    assert directory_of("tests/test_crd.py::test_y") == "tests"
    times = DirectoryTimes()
    times.seconds.update({"tests/train": 30.0, "tests/core": 5.0})
    times.tests.update({"tests/train": {"a", "b"}, "tests/core": {"c"}})
    lines = times.table({"tests/train": 20.0, "tests/core": 10.0, "tests/data": 99.0})
    assert lines[1].startswith("tests/train") and lines[1].endswith("OVER")
    assert lines[2].startswith("tests/core") and "OVER" not in lines[2]
    assert lines[-1].split() == ["all", "3", "35", "30"]  # the budget of the directories that ran
