"""Evaluation of a pruned model against its base: quality (perplexity, VQA accuracy), relative
performance and speed. See docs/evaluation.md.

Heavy libraries (torch, transformers) are imported inside the functions that need them.
"""

from __future__ import annotations

from interlace.stages.evaluate.perplexity import perplexity
from interlace.stages.evaluate.relative import benchmark_result, relative_performance, relative_score
from interlace.stages.evaluate.runner import (
    check_benchmarks,
    evaluate,
    headline,
    heldout_samples,
    perplexity_sets,
    retention_fields,
)

__all__ = [
    "benchmark_result",
    "check_benchmarks",
    "evaluate",
    "headline",
    "heldout_samples",
    "perplexity",
    "perplexity_sets",
    "relative_performance",
    "relative_score",
    "retention_fields",
]
