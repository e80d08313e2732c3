"""Relative performance: how much of the unpruned model's quality the pruned model keeps.

The paper (arXiv 2511.19676, section 5 of the method notes) reports, per benchmark, the pruned score
divided by the unpruned score, and the mean of those ratios over benchmarks, in percent. We keep that
definition exactly and make the edge cases explicit instead of letting them turn into NaN/inf (which
cannot be stored in a Kubernetes status):

* higher-is-better metrics (accuracy, exact match): ``100 * pruned / base``;
* lower-is-better metrics (perplexity): ``100 * base / pruned``, so that 100 % still means "as good as the
  base" and less than 100 % means "worse" for every benchmark;
* a base score of 0 (or a perplexity of 0 for the pruned model) makes the ratio undefined: the benchmark
  keeps its raw scores, its ``relative`` is ``None`` and it is left out of the mean. If no benchmark has
  a defined ratio the mean is ``None``, not a made-up 100 %.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from interlace.errors import InterlaceError
from interlace.schema.spec import BenchmarkResult

# Metrics where a smaller number is better. Everything else is treated as higher-is-better.
LOWER_IS_BETTER: frozenset[str] = frozenset({"perplexity", "loss"})


def relative_score(base: float, pruned: float, *, metric: str = "accuracy") -> float | None:
    """The pruned model's score relative to the base, in percent; ``None`` when undefined.

    Raises InterlaceError on negative or non-finite scores, which no supported metric produces and
    which would otherwise silently give a meaningless ratio.
    """
    for name, value in (("base", base), ("pruned", pruned)):
        if not math.isfinite(value) or value < 0:
            raise InterlaceError(
                f"benchmark score {name}={value!r} for metric {metric!r}: scores must be finite and >= 0"
            )
    if metric in LOWER_IS_BETTER:
        if pruned == 0:
            return None
        return 100.0 * base / pruned
    if base == 0:
        return None
    return 100.0 * pruned / base


def benchmark_result(name: str, base: float, pruned: float, *, metric: str = "accuracy") -> BenchmarkResult:
    """A BenchmarkResult with its relative score filled in."""
    return BenchmarkResult(
        name=name,
        base=base,
        pruned=pruned,
        relative=relative_score(base, pruned, metric=metric),
        metric=metric,
    )


def relative_performance(results: Iterable[BenchmarkResult]) -> float | None:
    """Mean of the defined per-benchmark relative scores, in percent (``None`` if there is none)."""
    values = [r.relative for r in results if r.relative is not None]
    if not values:
        return None
    return math.fsum(values) / len(values)
