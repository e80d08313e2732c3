"""Relative performance arithmetic, edge cases included."""

from __future__ import annotations

import math

import pytest

from interlace.errors import InterlaceError
from interlace.schema.spec import Results
from interlace.stages.evaluate import benchmark_result, relative_performance, relative_score


def test_higher_is_better() -> None:
    assert relative_score(80.0, 60.0) == pytest.approx(75.0)
    assert relative_score(50.0, 55.0) == pytest.approx(110.0)
    assert relative_score(0.5, 0.5) == pytest.approx(100.0)


def test_perplexity_is_inverted() -> None:
    # A pruned perplexity twice the base keeps 50 %; a better one is > 100 %.
    assert relative_score(10.0, 20.0, metric="perplexity") == pytest.approx(50.0)
    assert relative_score(10.0, 8.0, metric="perplexity") == pytest.approx(125.0)


def test_base_zero_is_undefined_not_100() -> None:
    assert relative_score(0.0, 0.0) is None
    assert relative_score(0.0, 30.0) is None
    assert relative_score(5.0, 0.0, metric="perplexity") is None
    assert relative_score(10.0, 0.0) == 0.0  # pruned collapsed to 0: a real 0 %


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_bad_scores_rejected(bad: float) -> None:
    with pytest.raises(InterlaceError, match="finite and >= 0"):
        relative_score(bad, 1.0)
    with pytest.raises(InterlaceError, match="pruned="):
        relative_score(1.0, bad)


def test_mean_over_benchmarks_skips_undefined() -> None:
    rs = [
        benchmark_result("a", 80.0, 60.0),  # 75
        benchmark_result("b", 40.0, 38.0),  # 95
        benchmark_result("c", 0.0, 10.0),  # undefined: out of the mean
        benchmark_result("ppl", 10.0, 12.5, metric="perplexity"),  # 80
    ]
    assert [r.relative for r in rs] == [pytest.approx(75.0), pytest.approx(95.0), None, pytest.approx(80.0)]
    assert relative_performance(rs) == pytest.approx((75.0 + 95.0 + 80.0) / 3)
    assert relative_performance([benchmark_result("z", 0.0, 0.0)]) is None
    assert relative_performance([]) is None


def test_paper_anchor_arithmetic() -> None:
    """The paper's headline: avg 71.6 vs 80.5 is 88.9 % (method notes, section 6)."""
    assert relative_score(80.5, 71.6) == pytest.approx(88.94, abs=0.01)


def test_results_wire_form_has_null_relative() -> None:
    r = Results(benchmarks=[benchmark_result("c", 0.0, 1.0)], relative_performance=None)
    wire = r.to_wire()
    assert wire["benchmarks"][0] == {"name": "c", "base": 0.0, "pruned": 1.0, "metric": "accuracy"}
    assert "relativePerformance" not in wire
